"""`fleet export` at scale: items/s and peak RSS of the export process for BENCH_EXPORT_ITEMS items.

The items are synthesised straight into a local store (direct file writes, the worker's object layout and
``_meta``; a few keys also in a second object, later fetched_at, as redeliveries or a product on two pages),
then ``fleet export`` runs as a subprocess; its peak RSS is the kernel's (wait4's ru_maxrss), so it is the
true peak, not a sample. Run alone: ``python -m tests.bench.export`` (BENCH_EXPORT_ITEMS=100000 for a quick
look).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.crawl import ROOT, base_env

SPIDER, RUN = "bench_export", "r1"
DUP_EVERY = 20  # one item in 20 is written again in another object: ~5 % duplicates for the dedup


def synthesize(root: Path, items: int, per_object: int) -> dict[str, Any]:
    """``items`` demo-shop-like items in objects of ``per_object`` items; returns what the export must find."""
    t0 = time.perf_counter()
    base = root / "items" / f"spider={SPIDER}" / f"run={RUN}"
    for i in range(256):
        (base / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    meta_tail = (f'"spider":"{SPIDER}","run":"{RUN}","worker_id":"bench-w1","attempt":1,"attempts":{{}},'
                 '"proxy":null,"spider_version":"1"')
    objects = dups = 0
    line_bytes = 0

    def line(n: int, fp: str, minute: int) -> str:
        key = hashlib.blake2b(str(n).encode(), digest_size=12).hexdigest()
        return (f'{{"name":"Sturdy Teapot #{n}","price":{(n % 9800 + 199) / 100},"sku":"SKU-{n:07d}",'
                f'"description":"The sturdy teapot is item {n} of the demo catalogue. Batch {n % 256:03d}.",'
                f'"url":"http://shop.test/product/{n}.html","_meta":{{"idempotency_key":"{key}",'
                f'"fingerprint":"{fp}","url":"http://shop.test/product/{n}.html",{meta_tail},'
                f'"fetched_at":"2026-12-01T10:{minute:02d}:00.000000Z"}}}}')

    for first in range(0, items, per_object):
        fp = hashlib.sha1(f"obj-{objects}".encode()).hexdigest()[:16]
        lines = []
        for n in range(first, min(items, first + per_object)):
            lines.append(line(n, fp, 0))
            if n % DUP_EVERY == DUP_EVERY - 1 and n >= per_object:  # again, later, next to an earlier item
                lines.append(line(n - per_object, fp, 1))
                dups += 1
        data = ("\n".join(lines) + "\n").encode()
        line_bytes += len(data)
        with open(base / fp[:2] / f"{fp}.jsonl", "wb") as f:
            f.write(data)
        objects += 1
    return {"items": items, "objects": objects, "duplicates": dups, "bytes": line_bytes,
            "synth_s": time.perf_counter() - t0}


def run_export(root: Path, tmp: Path, fmt: str = "parquet") -> dict[str, Any]:
    env = base_env(FLEET_STORE=f"file://{root}", FLEET_HOME=str(tmp / "home"), FLEET_LOG_FORMAT="json",
                   TMPDIR=str(tmp))
    t0 = time.perf_counter()
    with open(tmp / "export.out", "wb") as out, open(tmp / "export.err", "wb") as err:
        p = subprocess.Popen([sys.executable, "-m", "scraper.cli", "export", SPIDER, "--run", RUN, "--format", fmt],
                             env=env, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"fleet export failed ({p.returncode}): {(tmp / 'export.err').read_text()[-2000:]}")
    res = json.loads((tmp / "export.out").read_text())
    size = sum(f.stat().st_size for f in (root / "exports").rglob("part-*"))
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "result": res, "output_mb": size / 2**20}


def export_bench(tmp: Path, items: int, per_object: int = 10) -> dict[str, Any]:
    root = tmp / "export-data"
    try:
        syn = synthesize(root, items, per_object)
        ex = run_export(root, tmp)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res = ex["result"]
    assert res["records"] == items and res["duplicates"] == syn["duplicates"], (res, syn)
    return {**syn, "wall_s": ex["wall_s"], "cpu_s": ex["cpu_s"], "peak_rss_mb": ex["peak_rss_mb"],
            "items_per_s": (items + syn["duplicates"]) / ex["wall_s"], "rows": res["records"],
            "parts": res["parts"], "output_mb": ex["output_mb"]}


def main() -> int:
    items = int(os.environ.get("BENCH_EXPORT_ITEMS", "1000000"))
    per_object = int(os.environ.get("BENCH_EXPORT_PER_OBJECT", "10"))
    with tempfile.TemporaryDirectory(prefix="fleet-bench-export-") as tmp:
        out = export_bench(Path(tmp), items, per_object)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

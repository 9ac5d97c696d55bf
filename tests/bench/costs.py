"""What a LEASE and a COMMIT cost Redis per call and per entry, in instructions (issue #18).

Why: Redis's CPU per page is a call's fixed cost (the script's set-up, its first reads) spread over the batch,
plus each entry's own cost. Which one to cut decides where work pays: a one-entry chain pays the fixed part
per page, a full batch of 32 mostly the per-entry part. Instruction counts under callgrind do not move with
the machine's load, so they A/B two trees exactly (run this module from each, ``PYTHONPATH=<tree>``).

``python -m tests.bench.costs [--calls N] [--sizes 1,8,32]`` starts a redis-server (the bench's binary,
``procs.redis_binary``; AOF everysec as the bench) under ``valgrind --tool=callgrind --instr-atstart=no``,
seeds plain GETs of one run and domain, then for each batch size B: N LEASE calls of B entries with
instrumentation on, then N COMMIT calls of the same leases (each commit: DONE, one new child, the ack), and
prints instructions per call and per entry, and the least-squares split of each script into a fixed part per
call and a part per entry over the sizes. Needs valgrind (``apt-get install valgrind``); ~1 minute.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.keys import new_id
from tests.bench.procs import free_port, redis_binary, wait_port
from tests.bench.replay import callgrind_total

__all__ = ["main", "measure"]

SPIDER, RUN, DOMAIN = "costs", "r", "costs.example"


class _Callgrind:
    """A redis-server under callgrind with instrumentation off until ``on()``; ``total()`` dumps and reads."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work / 'cg.out'}",
             redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(work), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=120)

    def _ctl(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)

    def on(self) -> None:
        self._ctl("-z")
        self._ctl("-i", "on")

    def total(self) -> int:
        """Instructions since ``on()``; instrumentation off again."""
        self._ctl("-i", "off")
        before = set(self.work.glob("cg.out*"))
        self._ctl("-d")
        for _ in range(100):  # the dump is written by the server: wait for the new file
            new = set(self.work.glob("cg.out*")) - before
            if new:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        return callgrind_total(str(max(new, key=lambda f: f.stat().st_mtime)))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def _env(path: str) -> Envelope:
    return Envelope.for_url(f"https://{DOMAIN}/{path}", spider_name=SPIDER, run=RUN)


async def _size(cg: _Callgrind, q: FleetQueue, b: int, calls: int, serial: list[int]) -> tuple[int, int]:
    """(LEASE instructions, COMMIT instructions) over ``calls`` calls of ``b`` entries each."""
    serial[0] += 1
    phase = serial[0]
    await q.seed(RUN, [_env(f"s/{phase}/{i}") for i in range(b * calls)])
    cg.on()
    batches = [await q.lease(b, worker="w", lease_seconds=600) for _ in range(calls)]
    lease_ir = cg.total()
    commits = []
    for batch in batches:
        if len(batch.leased) != b:
            raise RuntimeError(f"LEASE gave {len(batch.leased)} entries, not {b}")
        cs = []
        for lease in batch.leased:
            serial[0] += 1
            kid = _env(f"k/{serial[0]}")
            cs.append(Commit(lease.id, lease.token, RUN, Envelope.loads(lease.raw).fp, [kid], domain=DOMAIN,
                             ids=[new_id(kid.fp)]))
        commits.append(cs)
    cg.on()
    for cs in commits:
        await q.commit(cs)
    commit_ir = cg.total()
    await q.client.delete(q.keys.ready, q.keys.env)  # the children: the next size leases its own seeds
    return lease_ir, commit_ir


def _split(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of instructions per call = fixed + per_entry * B: (fixed, per_entry)."""
    n = len(points)
    mx, my = sum(b for b, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((b - mx) ** 2 for b, _ in points)
    slope = sum((b - mx) * (y - my) for b, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


async def _measure(cg: _Callgrind, sizes: list[int], calls: int) -> dict[str, Any]:
    client = aioredis.Redis(port=cg.port, socket_timeout=600)
    q = FleetQueue(client, SPIDER)
    serial = [0]
    await _size(cg, q, 1, 2, serial)  # warm: scripts loaded, keys and encodings as in a crawl
    rows = []
    for b in sizes:
        lease_ir, commit_ir = await _size(cg, q, b, calls, serial)
        rows.append({"batch": b, "lease_per_call": lease_ir / calls, "commit_per_call": commit_ir / calls})
    await client.aclose()
    out: dict[str, Any] = {"calls": calls, "rows": rows}
    if len(sizes) > 1:
        for name in ("lease", "commit"):
            fixed, each = _split([(r["batch"], r[f"{name}_per_call"]) for r in rows])
            out[name] = {"fixed_per_call": fixed, "per_entry": each}
    return out


def measure(sizes: list[int], calls: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fleet-costs-"))
    cg = _Callgrind(work)
    try:
        return asyncio.run(_measure(cg, sizes, calls))
    finally:
        cg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30, help="calls per batch size (default 30)")
    ap.add_argument("--sizes", default="1,8,32", help="batch sizes, comma-separated (default 1,8,32)")
    a = ap.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    res = measure(sizes, a.calls)
    for r in res["rows"]:
        b = r["batch"]
        print(f"B={b:3d}  LEASE {r['lease_per_call']:>11,.0f} /call {r['lease_per_call'] / b:>9,.0f} /entry   "
              f"COMMIT {r['commit_per_call']:>11,.0f} /call {r['commit_per_call'] / b:>9,.0f} /entry")
    for name in ("lease", "commit"):
        if name in res:
            print(f"{name.upper():6s} fixed {res[name]['fixed_per_call']:,.0f} per call + "
                  f"{res[name]['per_entry']:,.0f} per entry (least squares over the sizes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

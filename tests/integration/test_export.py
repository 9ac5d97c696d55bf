"""`fleet run --export` and `fleet export` end to end: the README's DuckDB query over a real export of a crawl
with a product reachable from two pages and forced retries; an export to and from S3 (moto over HTTP);
an export failure is exit 3 with one line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from scraper.devtools.demo_site import DemoSite
from tests.fleetproc import ROOT, fleet, fleet_env

pytestmark = pytest.mark.integration

FLAKY = ("/product/5.html", "/product/9.html")  # 503 on the first hit: a class-A retry each


class DupSite(DemoSite):
    """The demo shop, where list page 1 also links product 2 by a second URL (the same product on two pages)
    and two product pages fail once."""

    def render(self, path: str) -> tuple[int, dict[str, str], str]:
        if path in FLAKY and self.hits[path] == 1:
            return 503, {"Retry-After": "0"}, "<h1>busy</h1>"
        status, headers, body = super().render(path)
        if path == "/catalogue/page-1.html":
            extra = '<li><article class="product"><a href="/product/2.html?from=featured">again</a></article></li>'
            body = body.replace("</ol>", extra + "\n</ol>")
        return status, headers, body


def readme_sql(marker: str) -> str:
    """The README's SQL block that contains ``marker``: the test runs the text the analysts read."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README has {len(found)} sql blocks with {marker!r}"
    return found[0]


def test_readme_duckdb_query_counts_one_row_per_key(redis_url: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    duckdb = pytest.importorskip("duckdb")
    n = 30
    with DupSite(n_products=n, per_page=10).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_STORE="file://./data",
                        FLEET_CWD=str(tmp_path), FLEET_RETRY_BASE="0.05", FLEET_RETRY_CAP="0.2")
        res = fleet("run", "demo_shop", "--run", "dup1", "--idle", "1", "--export", env=env, timeout=180)
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads(res.stdout)
        assert all(site.hits[p] == 2 for p in FLAKY), dict(site.hits)
    assert summary["dlq"] == 0
    export = summary["export"]
    assert export["parts"] == 1 and export["location"].endswith("exports/spider=demo_shop/run=dup1")

    # what the export must hold: one row per idempotency key found in the run's items objects
    keys: list[str] = []
    for obj in (tmp_path / "data" / "items" / "spider=demo_shop" / "run=dup1").rglob("*.jsonl"):
        keys += [json.loads(line)["_meta"]["idempotency_key"] for line in obj.read_text().splitlines()]
    assert len(keys) == n + 1  # product 2 was written twice (two URLs, two requests)
    assert export["rows"] == len(set(keys)) and export["duplicates"] == len(keys) - len(set(keys))

    monkeypatch.chdir(tmp_path)  # the README's paths are relative to where `fleet` ran (FLEET_STORE=file://./data)
    con = duckdb.connect()
    rows = con.execute(readme_sql("AS products")).fetchall()
    cols = [d[0] for d in con.description]
    per_run = {r[cols.index("run")]: dict(zip(cols, r, strict=True)) for r in rows}
    got = per_run["dup1"]
    assert got["spider"] == "demo_shop"
    assert got["rows"] == got["keys"] == export["rows"] == len(set(keys))
    assert got["products"] == n  # product 2 twice (two URLs) is one SKU
    # ... and what DuckDB counts is what the run's manifest says: items written, rows exported
    manifest = json.loads((tmp_path / "data" / "runs" / "spider=demo_shop" / "run=dup1" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["reconciliation"]["ok"]
    assert manifest["items"] == len(keys) and manifest["export"]["rows"] == got["rows"]
    latest = con.execute(readme_sql("QUALIFY")).fetchall()  # the latest row of every SKU over the runs
    assert len(latest) == n


def test_export_to_and_from_s3(s3_bucket: str, s3_server: Any, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects listed page by page (ListObjectsV2 of 1,000), GETs in a pool, parts uploaded from disk; a
    later smaller export removes the earlier parts it did not write."""
    from scraper.store.backends import open_store
    from scraper.store.export import export_run

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    store = open_store(s3_bucket)
    for i in range(1100):  # more than one listing page
        rec = {"n": i, "_meta": {"idempotency_key": f"k{i % 1000}", "fetched_at": f"2026-01-01T00:00:{i // 1000:02d}Z"}}
        store.put(f"items/spider=books/run=s3/{i % 256:02x}/{i:016x}.jsonl", json.dumps(rec).encode() + b"\n")
    res = export_run(s3_bucket, "books", "s3", "parquet", None, part_rows=400)
    assert (res["records"], res["parts"], res["duplicates"], res["objects"]) == (1000, 3, 100, 1100)
    prefix = "exports/spider=books/run=s3/"
    assert list(store.list(prefix)) == [f"{prefix}part-0000{i}.parquet" for i in range(3)]
    rows = []
    for i in range(3):
        (tmp_path / f"p{i}.parquet").write_bytes(store.get(f"{prefix}part-0000{i}.parquet"))
        rows += pq.read_table(tmp_path / f"p{i}.parquet").to_pylist()
    by_key = {r["_meta_idempotency_key"]: r["n"] for r in rows}
    assert len(by_key) == 1000 and by_key["k5"] == 1005 and by_key["k999"] == 999  # the later fetched_at

    res = export_run(s3_bucket, "books", "s3", "jsonl", None)  # another format: the Parquet parts stay
    parquet = [f"{prefix}part-0000{i}.parquet" for i in range(3)]
    assert res["parts"] == 1 and sorted(store.list(prefix)) == sorted([f"{prefix}part-00000.jsonl.gz", *parquet])
    res = export_run(s3_bucket, "books", "s3", "parquet", None)  # the same format: its earlier parts replaced
    assert res["parts"] == 1 and sorted(store.list(prefix)) == [f"{prefix}part-00000.jsonl.gz", parquet[0]]


def test_export_failure_is_exit_3_with_one_line(redis_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    item = {"sku": "a", "_meta": {"idempotency_key": "k", "fetched_at": "2026-01-01T00:00:00Z"}}
    (data / "items" / "spider=demo_shop" / "run=r1" / "ab").mkdir(parents=True)
    (data / "items" / "spider=demo_shop" / "run=r1" / "ab" / "ab12.jsonl").write_text(json.dumps(item) + "\n")
    (data / "exports").write_text("a file where the exports directory goes")
    env = fleet_env(redis_url, tmp_path, AWS_SECRET_ACCESS_KEY="never-shown-secret")
    res = fleet("export", "demo_shop", "--run", "r1", env=env)
    assert res.returncode == 3, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: export of demo_shop run r1 failed:"), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""

    # fleet run --export: the run drained (exit 0 otherwise), the export failed: exit 3, summary still printed
    with DemoSite(n_products=3).start() as site:
        env["FLEET_DEMO_URL"] = site.start_url
        res = fleet("run", "demo_shop", "--run", "r2", "--idle", "1", "--export", env=env, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["done"] == 4 and "export of demo_shop run r2 failed" in summary["export"]["error"]
    assert "never-shown-secret" not in res.stderr + res.stdout
    manifest = data / "runs" / "spider=demo_shop" / "run=r2" / "manifest.json"
    assert json.loads(manifest.read_text())["complete"] is False
    # the exports directory fixed, `fleet export` succeeds: the manifest gets the run's own verdict back (it stayed
    # "incomplete, exit 3, export failed" beside a successful export)
    (data / "exports").unlink()
    res = fleet("export", "demo_shop", "--run", "r2", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(manifest.read_text())
    assert m["complete"] is True and m["exit_code"] == 0 and m["incomplete_reasons"] == [], m
    assert m["export"]["rows"] == 3 and "error" not in m["export"], m["export"]

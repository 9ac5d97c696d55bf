"""Declared item keys and run manifests end to end: the same product on two pages, fetched after forced
retries and in two runs, is one key and one exported row; the manifest's coverage and schema match a
small known crawl; `fleet runs` lists the runs and `--refresh` rebuilds a manifest from Redis."""

from __future__ import annotations

import gzip
import json
import os
import textwrap
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests import loopback
from tests.fleetproc import fleet, fleet_env, fleet_json, objects

pytestmark = pytest.mark.integration

SPIDER = '''
import scrapy

class KeyShop(scrapy.Spider):
    name = "keyshop"
    item_key = ("sku",)

    def parse(self, response):
        for href in response.css("a.p::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)

    def parse_product(self, response):
        yield {"sku": response.css("span.sku::text").get(), "name": response.css("h1::text").get(),
               "colour": response.css("i.colour::text").get()}
'''

PRODUCTS = 5


class Shop:
    """Two list pages linking to the same five products (under different URLs), one page without a
    SKU; every product URL answers 503 on its first hit (a forced retry)."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        shop = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                shop.hits[self.path] += 1
                status, body = shop.page(self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = loopback.serve(H)
        self.base = loopback.base_url(self.server)

    def page(self, path: str) -> tuple[int, str]:
        if path.startswith("/list-"):
            side = path[len("/list-"):].split(".")[0]
            links = "".join(f'<a class="p" href="/p/{i}.html?from={side}">{i}</a>' for i in range(1, PRODUCTS + 1))
            if side == "a":
                links += '<a class="p" href="/nosku.html">?</a>'
            return 200, f"<html><body>{links}</body></html>"
        if path == "/nosku.html":
            return 200, "<html><body><h1>Mystery</h1></body></html>"
        if path.startswith("/p/"):
            if self.hits[path] == 1:
                return 503, "busy"
            n = path[3:].split(".")[0]
            colour = "<i class='colour'>red</i>" if "from=a" in path else ""
            return 200, f"<html><body><h1>Product {n}</h1><span class='sku'>SKU-{n}</span>{colour}</body></html>"
        return 404, "no"

    def close(self) -> None:
        loopback.stop(self.server)


@pytest.fixture
def shop() -> Iterator[Shop]:
    s = Shop()
    try:
        yield s
    finally:
        s.close()


def _env(tmp: Path, redis_url: str) -> dict[str, str]:
    mod = tmp / "spiders"
    mod.mkdir(exist_ok=True)
    (mod / "key_spiders.py").write_text(textwrap.dedent(SPIDER))
    env = fleet_env(redis_url, tmp, FLEET_SPIDER_MODULES="key_spiders", FLEET_RETRY_BASE="0.05",
                    FLEET_CONCURRENCY="4")
    env["PYTHONPATH"] = f"{mod}{os.pathsep}{env['PYTHONPATH']}"
    return env


def _run(env: dict[str, str], urls: Path, run: str) -> dict[str, Any]:
    res = fleet("run", "keyshop", "--urls", str(urls), "--run", run, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _keys(tmp: Path, run: str) -> dict[str, str | None]:
    """idempotency key -> sku, over every record of the run's objects."""
    out: dict[str, str | None] = {}
    for records in objects(tmp / "data", "items", "keyshop", run).values():
        for r in records:
            out[r["_meta"]["idempotency_key"]] = r["sku"]
    return out


def test_declared_key_dedups_pages_retries_and_runs(redis_url: str, tmp_path: Path, shop: Shop) -> None:
    env = _env(tmp_path, redis_url)
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{shop.base}/list-a.html\n{shop.base}/list-b.html\n")
    first = _run(env, urls, "k1")
    assert first["outcomes"].get("A", 0) >= 2 * PRODUCTS and first["dlq"] == 0, first  # every product retried
    assert len(objects(tmp_path / "data", "items", "keyshop", "k1")) == 2 * PRODUCTS + 1  # one object a page
    k1 = _keys(tmp_path, "k1")
    assert sorted(s for s in k1.values() if s) == [f"SKU-{i}" for i in range(1, PRODUCTS + 1)]  # one key a SKU
    assert list(k1.values()).count(None) == 1  # the page without a SKU keeps its per-request key

    mpath = tmp_path / "data" / "runs" / "spider=keyshop" / "run=k1" / "manifest.json"
    before = json.loads(mpath.read_text())
    assert "export" not in before
    exported = fleet_json("export", "keyshop", "--run", "k1", "--format", "jsonl", env=env)
    part = tmp_path / "data" / "exports" / "spider=keyshop" / "run=k1" / "part-00000.jsonl.gz"
    rows = [json.loads(x) for x in gzip.decompress(part.read_bytes()).decode().splitlines()]
    assert exported["records"] == len(rows) == PRODUCTS + 1
    assert sorted(str(r["sku"]) for r in rows) == sorted([f"SKU-{i}" for i in range(1, PRODUCTS + 1)] + ["None"])

    # a standalone export records itself in the manifest as `fleet run --export` does, and nothing else
    written = mpath.read_bytes()
    manifest = json.loads(written)
    assert exported["manifest"] == "runs/spider=keyshop/run=k1/manifest.json"
    assert manifest["export"] == {"format": "jsonl", "parts": 1, "rows": len(rows),
                                  "duplicates": exported["duplicates"], "location": exported["location"]}
    assert {k: v for k, v in manifest.items() if k != "export"} == before
    again = fleet_json("export", "keyshop", "--run", "k1", "--format", "jsonl", env=env)
    assert again["manifest"] == exported["manifest"] and mpath.read_bytes() == written  # idempotent
    elsewhere = fleet_json("export", "keyshop", "--run", "k1", "--out", str(tmp_path / "elsewhere"), env=env)
    assert elsewhere["manifest"] is None and mpath.read_bytes() == written  # not the run's exports/
    assert manifest["complete"] is True and manifest["reconciliation"]["ok"]
    assert manifest["item_key"] == ["sku"] and manifest["key_missing"] == 1
    n = 2 * PRODUCTS + 1
    assert manifest["items"] == manifest["objects"] == n
    assert manifest["field_coverage"] == {"colour": round(PRODUCTS / n, 4), "name": 1.0, "sku": round(2 * PRODUCTS / n, 4)}
    assert manifest["schema"] == {"colour": "string|null", "name": "string", "sku": "string|null"}
    assert manifest["counts"]["seeded"] == 2 and manifest["counts"]["discovered"] == n
    assert manifest["counts"]["outcomes"]["A"] == first["outcomes"]["A"]

    shop.hits.clear()  # the second run's first hits fail too
    _run(env, urls, "k2")
    assert _keys(tmp_path, "k2") == k1  # deterministic across runs: no run in the key

    listed = fleet("runs", "keyshop", env=env)
    assert listed.returncode == 0 and "k1" in listed.stdout and "k2" in listed.stdout, listed.stdout
    (tmp_path / "data" / "runs" / "spider=keyshop" / "run=k2" / "manifest.json").unlink()
    refreshed = {m["run"]: m for m in fleet_json("runs", "keyshop", "--refresh", "--json", env=env)}
    assert sorted(refreshed) == ["k1", "k2"]
    assert refreshed["k1"]["export"] == manifest["export"]  # a refresh keeps the recorded export
    k2 = refreshed["k2"]
    assert k2["written_by"] == "fleet runs --refresh" and k2["complete"] is True and k2["final"] is True
    assert k2["items"] == n and k2["reconciliation"]["ok"] and k2["counts"]["seeded"] is None

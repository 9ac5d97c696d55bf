"""A real worker process serving its own Prometheus metrics on FLEET_METRICS_PORT, scraped over HTTP on
127.0.0.1 while it crawls the demo site: the counters follow the crawl (pages, items, objects, outcomes
per class and reason, dedup skips), both latency histograms have observations, and without the variable
no port is opened; a gated spider's worker shows each domain's limit, spacing and dispatch rate."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scraper.devtools.demo_site import DemoSite
from tests.countingsite import CountingSite
from tests.fleetproc import fleet_env, fleet_json, spider_module_env, start_worker, wait_all, wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted({"spider": "demo_shop", **labels}.items()))), 0.0)


def test_a_worker_serves_its_metrics_while_it_crawls(redis_url: str, tmp_path: Path) -> None:
    port = _free_port()
    with DemoSite(n_products=30, per_page=10).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_METRICS_PORT=str(port))
        assert fleet_json("seed", "demo_shop", "--run", "r1", env=env)["enqueued"] == 1
        missing = site.start_url.rsplit("/", 1)[0] + "/missing.html"  # a 404: class D
        assert fleet_json("seed", "demo_shop", "--run", "r1", "--url", missing, env=env)["enqueued"] == 1
        log = tmp_path / "w.log"
        proc = start_worker("demo_shop", env, log)
        try:
            def crawled() -> bool:
                got = _scrape(port)
                return got is not None and _get(got, "fleet_worker_items_total") >= 30 \
                    and _get(got, "fleet_worker_dead_lettered_total") >= 1
            assert wait_for(crawled, 90, interval=0.3), log.read_text()[-3000:]
            got = _scrape(port)
            assert got is not None
            assert _get(got, "fleet_worker_up") == 1
            assert _get(got, "fleet_worker_pages_fetched_total") >= 34  # 3 list pages, 30 products, the 404
            assert _get(got, "fleet_worker_objects_written_total") == 30  # one per product page
            assert _get(got, "fleet_worker_outcomes_total", **{"class": "ok", "reason": "ok"}) >= 33
            d = {k: v for k, v in got.items() if k[0] == "fleet_worker_outcomes_total" and ("class", "D") in k[1]}
            assert sum(d.values()) == 1 and any(("reason", "http:404") in k[1] for k in d), d
            assert _get(got, "fleet_worker_fetch_seconds_count") >= 34
            assert _get(got, "fleet_worker_fetch_seconds_bucket", le="+Inf") >= 34
            assert _get(got, "fleet_worker_commit_seconds_count") >= 1
            assert ("fleet_worker_retries_total", (("spider", "demo_shop"),)) in got
            assert ("fleet_worker_dedup_skips_total", (("spider", "demo_shop"),)) in got
        finally:
            proc.send_signal(signal.SIGTERM)
            assert wait_all([proc], 40) == [0], log.read_text()[-3000:]
    assert _scrape(port) is None  # the server closed with the spider


def test_without_the_port_no_metrics_server(redis_url: str, tmp_path: Path) -> None:
    port = _free_port()
    with DemoSite(n_products=5, per_page=10).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url)
        assert fleet_json("seed", "demo_shop", "--run", "r1", env=env)["enqueued"] == 1
        log = tmp_path / "w.log"
        assert wait_all([start_worker("demo_shop", env, log, "--until-idle", "1")], 90) == [0]
        assert '"worker_metrics_serving"' not in log.read_text() and "worker_metrics_serving" not in log.read_text()
    assert _scrape(port) is None


GATED = '''
import scrapy

class Gated(scrapy.Spider):
    name = "gated"
    custom_settings = {"DOWNLOAD_DELAY": 0.1, "RANDOMIZE_DOWNLOAD_DELAY": False, "CONCURRENT_REQUESTS_PER_DOMAIN": 2}

    def parse(self, response):
        yield {"path": response.url}
'''


def test_a_gated_worker_shows_its_domains_limit_spacing_and_rate(redis_url: str, tmp_path: Path) -> None:
    port = _free_port()
    site = CountingSite(pause=0.0)
    try:
        env = spider_module_env(redis_url, tmp_path, "metric_spiders", GATED, FLEET_METRICS_PORT=str(port))
        args = [a for i in range(150) for a in ("--url", f"{site.base}/p/{i}")]
        assert fleet_json("seed", "gated", "--run", "r1", *args, env=env)["enqueued"] == 150
        log = tmp_path / "w.log"
        proc = start_worker("gated", env, log, "--concurrency", "8")
        try:
            # 0.1 s apart: 70 pages is 7 s in, past the first 5 s window of the rate
            assert wait_for(lambda: site.hits >= 70, 60, interval=0.2), log.read_text()[-3000:]
            got = _scrape(port)
            assert got is not None
            d = {"spider": "gated", "domain": "127.0.0.1"}
            key = tuple(sorted(d.items()))
            assert got[("fleet_domain_limit", key)] == 2
            assert got[("fleet_domain_spacing_seconds", key)] == 0.1
            assert ("fleet_domain_waiting", key) in got and ("fleet_domain_inflight", key) in got
            rate = got[("fleet_domain_rate", key)]
            # the gate grants 10 a second; a loaded host's worker may fall a little behind, never ahead
            assert 6.0 <= rate <= 11.0, f"fleet_domain_rate {rate}/s; the spacing allows 10/s"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert wait_all([proc], 40) == [0], log.read_text()[-3000:]
    finally:
        site.stop()

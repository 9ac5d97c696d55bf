"""robots.txt once for the fleet (issue #17 items 2 and 5), against a local site that counts what it receives.

Three `fleet worker` processes crawl one site whose robots.txt (served slowly, so that the three ask for
it at once) disallows /private and sets a Crawl-delay: the site sees exactly one robots.txt request, no
/private request, every allowed page once; the /private URLs are in the DLQ as D ``policy:robots`` with
the file's version as evidence. A second test measures the Crawl-delay at the server.
"""

from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests import loopback
from tests.fleetproc import fleet_json, spider_module_env, start_worker, wait_all

SPIDER = '''
import scrapy

class PoliteRobots(scrapy.Spider):
    name = "polite_robots"
    custom_settings = {"ROBOTSTXT_OBEY": True}

    def parse(self, response):
        yield {"url": response.url}


class QuickRobots(PoliteRobots):
    name = "quick_robots"  # a stall limit (download timeout + watchdog margin) shorter than the Crawl-delay
    custom_settings = {"ROBOTSTXT_OBEY": True, "DOWNLOAD_TIMEOUT": 0.5, "FLEET_WATCHDOG_MARGIN": 0.3}
'''


class _RobotsSite:
    """Serves ``robots`` at /robots.txt (after ``robots_delay`` seconds) and a small page elsewhere; counts
    requests per path and remembers when each page request arrived."""

    def __init__(self, robots: bytes, robots_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()
        self.times: list[float] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with site.lock:
                    site.hits[self.path] += 1
                    if self.path != "/robots.txt":
                        site.times.append(time.monotonic())
                if self.path == "/robots.txt":
                    time.sleep(robots_delay)
                    body, ctype = robots, "text/plain"
                else:
                    body, ctype = b"<html><body>ok</body></html>", "text/html"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = loopback.serve(Handler)
        self.base = loopback.base_url(self.server)

    def stop(self) -> None:
        loopback.stop(self.server)


def _env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return spider_module_env(redis_url, tmp_path, "robots_spiders", SPIDER)


def test_robots_txt_fetched_once_for_three_workers(redis_url: str, tmp_path: Path) -> None:
    site = _RobotsSite(b"User-agent: *\nDisallow: /private\nCrawl-delay: 0.1\n", robots_delay=1.0)
    try:
        env = _env(redis_url, tmp_path)
        allowed = [f"/p/{i}" for i in range(9)]
        private = [f"/private/{i}" for i in range(3)]
        urls = [a for path in allowed + private for a in ("--url", site.base + path)]
        assert fleet_json("seed", "polite_robots", "--run", "r1", *urls, env=env)["enqueued"] == 12
        procs = [start_worker("polite_robots", env, tmp_path / f"w{i}.log", "--concurrency", "4",
                              "--until-idle", "2") for i in range(3)]
        assert wait_all(procs, 120) == [0, 0, 0]
        logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
        assert site.hits["/robots.txt"] == 1, (site.hits, logs[-3000:])
        assert all(site.hits[p] == 1 for p in allowed), site.hits
        assert not any(site.hits[p] for p in private), site.hits
        dlq = fleet_json("dlq", "polite_robots", "list", "--json", env=env)
        assert sorted(e["url"] for e in dlq) == sorted(site.base + p for p in private)
        for entry in dlq:
            assert entry["class"] == "D" and entry["reason"] == "policy:robots", entry
            assert "sha256=" in entry["detail"] and "status=200" in entry["detail"], entry
            assert entry.get("evidence_key"), entry
        assert logs.count("robots_fetched") == 1
    finally:
        site.stop()


def test_crawl_delay_spaces_the_workers_requests(redis_url: str, tmp_path: Path) -> None:
    site = _RobotsSite(b"User-agent: *\nCrawl-delay: 0.4\n")
    try:
        env = _env(redis_url, tmp_path)
        urls = [a for i in range(5) for a in ("--url", f"{site.base}/p/{i}")]
        assert fleet_json("seed", "polite_robots", "--run", "r1", *urls, env=env)["enqueued"] == 5
        proc = start_worker("polite_robots", env, tmp_path / "w.log", "--concurrency", "8", "--until-idle", "1")
        assert wait_all([proc], 90) == [0]
        assert site.hits["/robots.txt"] == 1
        assert len(site.times) == 5
        gaps = [b - a for a, b in zip(site.times, site.times[1:], strict=False)]
        assert min(gaps) >= 0.35, f"requests {gaps} apart; robots.txt asked for 0.4 s"
    finally:
        site.stop()


def test_a_robots_refetch_behind_the_crawl_delay_is_not_a_stall(redis_url: str, tmp_path: Path) -> None:
    """robots.txt expires mid-crawl (FLEET_ROBOTS_TTL): its re-fetch queues in the site's slot behind the
    Crawl-delay, longer than the stall limit of the pages waiting for it; they wait, none is retried."""
    site = _RobotsSite(b"User-agent: *\nCrawl-delay: 1\n")
    try:
        env = {**_env(redis_url, tmp_path), "FLEET_ROBOTS_TTL": "1.5"}
        urls = [a for i in range(7) for a in ("--url", f"{site.base}/p/{i}")]
        assert fleet_json("seed", "quick_robots", "--run", "r1", *urls, env=env)["enqueued"] == 7
        proc = start_worker("quick_robots", env, tmp_path / "w.log", "--concurrency", "4", "--until-idle", "1")
        assert wait_all([proc], 90) == [0]
        log = (tmp_path / "w.log").read_text()
        assert site.hits["/robots.txt"] >= 2, site.hits  # re-fetched while pages waited for it
        assert "request_stalled" not in log, log[-3000:]
        assert all(site.hits[f"/p/{i}"] == 1 for i in range(7)), site.hits  # each page once: nothing retried
        assert fleet_json("dlq", "quick_robots", "list", "--json", env=env) == []
    finally:
        site.stop()

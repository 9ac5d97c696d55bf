"""A worker's speculative fetch (scraper.worker.specpick) asks a site for nothing Scrapy would not.

The site: a chain of pages, each linking to the next page twice (a pager at the top and at the bottom) and
to an "about" page last, as a footer does. Scrapy fetches every URL once. Before the worker chose what it
speculates on, it took READY's next child blindly: the footer link (SEEN after the first page) and the
bottom pager link (SEEN once COMMIT queued the top one), so the site saw the about page once per page and
the chain pages twice, each extra fetch thrown away.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.fleetproc import fleet_json, objects, spider_module_env
from tests.loopback import reply, serving

pytestmark = pytest.mark.integration

PAGES = 15
SPIDER = """
    import scrapy

    class Chain(scrapy.Spider):
        name = "spec_chain"
        custom_settings = {"CONCURRENT_REQUESTS": 4}

        def parse(self, response):
            yield {"url": response.url}
            yield from response.follow_all(response.css("a::attr(href)").getall())
"""


def _site(hits: Counter[str], lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Chain(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                hits[self.path] += 1
            if self.path.startswith("/p/"):
                n = int(self.path[3:])
                nxt = f'<a href="/p/{n + 1}">next</a>' if n < PAGES else ""
                body = f"<html><body>{nxt}<p>page {n}</p>{nxt}<a href='/about'>about</a></body></html>"
            else:
                body = "<html><body>about us</body></html>"
            reply(self, body.encode())

    return Chain


def test_every_url_is_fetched_once(redis_url: str, tmp_path: Path) -> None:
    hits: Counter[str] = Counter()
    with serving(_site(hits, threading.Lock())) as base:
        env = spider_module_env(redis_url, tmp_path, "spec_chain_spiders", SPIDER)
        (tmp_path / "urls.txt").write_text(f"{base}/p/1\n")
        summary = fleet_json("run", "spec_chain", "--urls", str(tmp_path / "urls.txt"), "--run", "r1",
                             "--workers", "1", env=env)
    assert summary["done"] == PAGES + 1 and summary["dlq"] == 0, summary  # and fleet_json saw exit 0
    assert hits == Counter({**{f"/p/{n}": 1 for n in range(1, PAGES + 1)}, "/about": 1}), hits
    urls = {i["url"] for rows in objects(tmp_path / "data", "items", "spec_chain", "r1").values() for i in rows}
    assert len(urls) == PAGES + 1

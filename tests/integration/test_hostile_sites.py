"""What a hostile-site probe found (session of 2026-12-07), end to end through the real ``fleet run``, a real
redis-server and a site on 127.0.0.1:

* a UTF-16 page's links: Scrapy encodes a request's header names in the page's encoding (``R\\x00e\\x00f...``
  for Referer), which failed the fetch and then Fleet's own entry check (D ``bad_envelope`` without a URL);
  now the envelope holds ``Referer`` and every child is fetched;
* a 200 page whose ``<base href>`` is no URL (``http://[::1/``) was D ``redirect:bad_location`` (the meta refresh
  check resolves every page's base URL) and its item was lost; now it is parsed and its item stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests import loopback
from tests.fleetproc import fleet, spider_module_env

pytestmark = pytest.mark.integration

SPIDERS = '''
import scrapy


class Hostile(scrapy.Spider):
    name = "hostile_sites"

    def parse(self, response):
        yield {"path": response.url.split("/", 3)[3].split("?")[0], "title": response.css("title::text").get()}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)
'''


class _Site(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        _Site.seen.append((path, self.headers.get("Referer", "")))
        ctype = "text/html; charset=utf-8"
        if path == "/u16":
            body = '<html><head><title>u16</title></head><body><a href="/ok/1">1</a> <a href="/ok/2">2</a>' \
                   "</body></html>"
            data = body.encode("utf-16")
            ctype = "text/html; charset=utf-16"
        elif path == "/base":
            data = b'<html><head><base href="http://[::1/"><title>base</title></head><body>x</body></html>'
        else:
            data = f"<html><head><title>{path}</title></head></html>".encode()
        loopback.reply(self, data, content_type=ctype)


@pytest.fixture
def site() -> Iterator[str]:
    _Site.seen = []
    with loopback.serving(_Site) as url:
        yield url


def test_utf16_links_and_a_bad_base_href_keep_their_pages(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "hostile_site_spiders", SPIDERS)
    (tmp_path / "seeds.txt").write_text(f"{site}/u16\n{site}/base\n")
    res = fleet("run", "hostile_sites", "--urls", str(tmp_path / "seeds.txt"), "--run", "r1", env=env, timeout=180)
    dlq = fleet("dlq", "hostile_sites", "list", "--json", env=env).stdout
    assert res.returncode == 0, (res.returncode, dlq[-3000:], res.stderr[-3000:])
    summary = json.loads(res.stdout)
    # no failed first fetch (the classification's log line, should one fail: a spurious A was seen once in ~30
    # runs on a saturated host, its reason not captured)
    assert summary["dlq"] == 0 and summary["outcomes"].get("A", 0) == 0, \
        (summary, [line for line in res.stderr.splitlines() if "request_classified" in line or "stalled" in line])
    items = {i["path"]: i["title"] for f in sorted((tmp_path / "data").rglob("*.jsonl"))
             for i in map(json.loads, f.read_text().splitlines())}
    assert items == {"u16": "u16", "base": "base", "ok/1": "/ok/1", "ok/2": "/ok/2"}, items
    referers = {p: r for p, r in _Site.seen if p.startswith("/ok/")}
    assert referers == {"/ok/1": f"{site}/u16", "/ok/2": f"{site}/u16"}, _Site.seen


def test_headers_given_as_bytes_on_a_utf16_page_stay_as_they_are() -> None:
    """Review: Scrapy keeps headers given as bytes (FormRequest's Content-Type) as passed, in ASCII; only those given
    as str are encoded in the page's encoding. Both must reach the envelope as their names and values."""
    from scrapy.http import HtmlResponse

    from scraper.queue.envelope import Envelope

    for enc in ("utf-16", "utf-32", "cp500", "utf-8"):
        page = HtmlResponse("http://x/a", body="<a href='/b'>b</a>".encode(enc), encoding=enc)
        req = page.follow("/b", headers={b"Accept": b"text/html", b"Content-Type": b"application/json"})
        req.headers.setdefault("Referer", page.url)
        headers = Envelope.from_request(req, spider_name="s", run="r").headers
        assert headers == {"Accept": ["text/html"], "Content-Type": ["application/json"],
                           "Referer": ["http://x/a"]}, (enc, headers)

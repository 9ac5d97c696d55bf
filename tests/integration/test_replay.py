"""`fleet replay` on the pages users actually have: a CrawlSpider's rule pages (their callback reads
``response.meta["rule"]``), a page in a charset other than UTF-8 declared only in its Content-Type, a start
page, and a page named by its items/ or raw/ key instead of its evidence.

The on-call loop is: drift alert, fix the selectors, ``fleet replay`` the drifted page until it exits 0, reset
the breaker. Each case here once exited 1 with the fix in place (KeyError 'rule', NotImplementedError from
``parse``, mojibake read as missing fields, "pass --url as well" with --url refused).
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests import loopback
from tests.fleetproc import fleet, objects, spider_module_env

pytestmark = pytest.mark.integration

SPIDER = '''
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule

class CrawlShop(CrawlSpider):
    name = "crawlshop"
    required_fields = ("name", "price")
    rules = (
        Rule(LinkExtractor(restrict_css="a.next")),
        Rule(LinkExtractor(allow=r"/p/\\d+$", restrict_css="a.prod"), callback="parse_item", follow=False),
    )

    def parse_item(self, response):
        yield {"name": response.css(%(name)r).get(), "price": response.css("p.price::text").get(),
               "rule": response.meta["rule"], "url": response.url}
'''
BROKEN = {"name": "h1::text"}
FIXED = {"name": "h1::text, h2.title::text"}


class _Shop(BaseHTTPRequestHandler):
    """/list: three product links. /p/N: a product page in windows-1252, declared only in the header; from
    /p/3 on, the redesigned layout (h2.title instead of h1)."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/list":
            links = "".join(f"<a class='prod' href='/p/{i}'>p{i}</a>" for i in range(1, 5))
            loopback.reply(self, f"<html><body>{links}</body></html>".encode())
            return
        n = int(self.path.rsplit("/", 1)[-1])
        tag = "h1" if n < 3 else "h2 class='title'"
        page = f"<html><body><{tag}>Café nº{n}</{tag.split()[0]}><p class='price'>{n},90 €</p></body></html>"
        loopback.reply(self, page.encode("cp1252"), content_type="text/html; charset=windows-1252")


def _env(redis_url: str, tmp: Path, selectors: dict[str, str]) -> dict[str, str]:
    sub = tmp / ("fixed" if selectors is FIXED else "broken")
    sub.mkdir(exist_ok=True)
    env = spider_module_env(redis_url, sub, "crawlshop_spiders", SPIDER % selectors, FLEET_STORE_RAW="all")
    env["FLEET_STORE"] = f"file://{tmp / 'data'}"  # one store for both versions of the spider
    return env


def _replay(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    res = fleet("replay", "crawlshop", *args, env=env)
    assert res.stdout.strip(), res.stderr[-2000:]
    return res.returncode, json.loads(res.stdout)


def test_replay_of_crawlspider_pages_in_their_own_charset(redis_url: str, tmp_path: Path) -> None:
    with loopback.serving(_Shop) as base:
        broken = _env(redis_url, tmp_path, BROKEN)
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{base}/list\n")
        res = fleet("run", "crawlshop", "--urls", str(urls), "--run", "r1", env=broken)
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["outcomes"].get("C", 0) == 2 and summary["objects"] == 2, summary  # /p/3, /p/4 drifted
        fixed = _env(redis_url, tmp_path, FIXED)

        # the drifted page, by its evidence key: the rule's callback, its meta and its charset come back
        evidence = sorted(k for k in objects(tmp_path / "data", "evidence", "crawlshop", "r1") if "/C/" in k)[0]
        code, bad = _replay("--key", evidence, env=broken)
        assert code == 1 and bad["drift"]["missing"] == ["name"] and bad["error"] is None, bad
        code, good = _replay("--key", evidence, env=fixed)
        assert code == 0 and good["callback"] == "_callback" and good["error"] is None, good
        (item,) = good["items"]
        assert item["name"].startswith("Café nº") and item["price"].endswith(",90 €") and item["rule"] == 1, item

        # by URL: the evidence is found by the page's fingerprint
        code, by_url = _replay("--url", f"{base}/p/4", env=fixed)
        assert code == 0 and by_url["items"][0]["name"] == "Café nº4", by_url

        # a page that was fine (no evidence), by its items/ key: the URL is in its _meta, the rule from the URL
        (items_key,) = [k for k, lines in objects(tmp_path / "data", "items", "crawlshop", "r1").items()
                        if lines[0]["url"] == f"{base}/p/1"]
        code, ok_page = _replay("--key", items_key, env=fixed)
        assert code == 0 and ok_page["url"] == f"{base}/p/1" and ok_page["callback"] == "_callback", ok_page
        # (no evidence, so no Content-Type: the charset is Scrapy's guess without headers, close but not exact)
        assert ok_page["items"][0]["name"].startswith("Café n") and ok_page["items"][0]["rule"] == 1, ok_page

        # the start page: CrawlSpider's _parse (its rules), never Spider.parse's NotImplementedError
        code, start = _replay("--url", f"{base}/list", env=fixed)
        assert start["callback"] == "_parse" and start["error"] is None, start
        assert code == 0 and start["callback"] == "_parse" and start["requests"] == 4 and start["error"] is None, start

        # a raw/ key of a page without evidence nor items: a one-line error that says what to do
        raw = next(k for k in objects(tmp_path / "data", "raw", "crawlshop", "r1")
                   if k.split("/")[-1].split(".")[0] == start["fingerprint"])
        res = fleet("replay", "crawlshop", "--key", raw, env=fixed)
        assert res.returncode == 1 and "--url URL instead of --key" in res.stderr, res.stderr

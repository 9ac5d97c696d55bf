"""FLEET_MAX_PAGE_TAGS: a page whose markup would take a worker's memory to parse is refused before any callback
parses it (middlewares.tags), end to end through the real ``fleet run``, a real redis-server and a site on
127.0.0.1.

* ``/tags`` (1,100,000 ``<p>`` elements, 3.3 MB: lxml would take ~150 MB for it) is D ``body:too_many_tags`` at
  the default limit; the count and the limit are the DLQ entry's detail; its callback never runs.
* A gzip-encoded page is counted once decoded.
* A spider's ``custom_settings`` lowers the limit (``/small`` then goes to the DLQ as well, and so does a page in
  an EBCDIC charset, where ``<`` is not the byte 0x3C; an XML feed is not counted) or switches it off (0: ``/tags``
  is parsed); a page under the limit is crawled as before.
"""

from __future__ import annotations

import gzip
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


class TagsDefault(scrapy.Spider):
    name = "tags_default"

    def parse(self, response):
        yield {"path": response.url.rsplit("/", 1)[-1], "b": len(response.css("p"))}


class TagsLow(TagsDefault):
    name = "tags_low"
    custom_settings = {"FLEET_MAX_PAGE_TAGS": 50}


class TagsOff(TagsDefault):
    name = "tags_off"
    custom_settings = {"FLEET_MAX_PAGE_TAGS": 0}
'''

_MANY = b"<html><body>" + b"<p>" * 1_100_000 + b"</body></html>"


class _Site(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        headers = {"Content-Type": "text/html"}
        if self.path == "/tags":
            body = _MANY
        elif self.path == "/gzipped":
            body = gzip.compress(_MANY, 1)
            headers["Content-Encoding"] = "gzip"
        elif self.path == "/ebcdic":  # '<' is byte 0x4C in cp500: counted in the decoded text
            body = ("<html><body>" + "<p>x</p>" * 60 + "</body></html>").encode("cp500")
            headers["Content-Type"] = "text/html; charset=cp500"
        elif self.path == "/feed":  # XML is not counted: feeds are read by iternodes in bounded memory
            body = b'<?xml version="1.0"?><rss>' + b"<item><p>x</p></item>" * 60 + b"</rss>"
            headers["Content-Type"] = "application/xml"
        else:  # /small: 100 tags
            body = b"<html><body>" + b"<p>x</p>" * 49 + b"</body></html>"
        loopback.reply(self, body, content_type=headers.pop("Content-Type"), headers=headers)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with loopback.serving(_Site) as url:
        yield url


def _run(spider: str, redis_url: str, tmp: Path, site: str, paths: list[str]) -> tuple[int, dict[str, int],
                                                                                         dict[str, dict[str, Any]]]:
    tmp.mkdir(exist_ok=True)
    env = spider_module_env(redis_url, tmp, "tag_spiders", SPIDERS)
    (tmp / "seeds.txt").write_text("".join(f"{site}/{p}\n" for p in paths))
    res = fleet("run", spider, "--urls", str(tmp / "seeds.txt"), "--run", "r1", env=env, timeout=180)
    items = {i["path"]: i["b"] for f in sorted((tmp / "data").rglob("*.jsonl"))
             for i in map(json.loads, f.read_text().splitlines())}
    dlq = fleet("dlq", spider, "list", "--json", env=env)
    assert dlq.returncode == 0, dlq.stderr[-2000:]
    dead = {r["url"].rsplit("/", 1)[-1]: r for r in json.loads(dlq.stdout)}
    return res.returncode, items, dead


def test_a_page_of_too_many_tags_is_refused_before_its_callback(redis_url: str, tmp_path: Path, site: str) -> None:
    rc, items, dead = _run("tags_default", redis_url, tmp_path, site, ["tags", "gzipped", "small"])
    assert rc == 4, rc  # drained, with requests in the DLQ
    assert items == {"small": 49}, items
    assert {p: r["reason"] for p, r in dead.items()} == {"tags": "body:too_many_tags",
                                                         "gzipped": "body:too_many_tags"}, dead
    assert "limit=1000000" in json.dumps(dead["tags"]) and "tags=1100004 bytes=3300026" in json.dumps(dead["tags"]), dead["tags"]


def test_a_spider_lowers_the_limit_or_switches_it_off(redis_url: str, tmp_path: Path, site: str) -> None:
    rc, items, dead = _run("tags_low", redis_url, tmp_path / "low", site, ["small", "ebcdic", "feed"])
    assert rc == 4 and items == {"feed": 60}, (rc, items, dead)  # the feed: 60 <p> over the limit of 50, parsed
    assert {p: r["reason"] for p, r in dead.items()} == {"small": "body:too_many_tags",
                                                         "ebcdic": "body:too_many_tags"}, dead
    rc, items, dead = _run("tags_off", redis_url, tmp_path / "off", site, ["tags"])
    assert rc == 0 and items == {"tags": 1_100_000} and not dead, (rc, items, dead)

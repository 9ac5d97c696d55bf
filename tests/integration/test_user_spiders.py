"""Ordinary Scrapy spiders, as their users write them, through the real ``fleet seed`` / ``fleet run`` (what a probe
of the user contract found, session of 2026-12-07):

* a spider is made by ``from_crawler`` for its ``start()`` too: a ``start()`` reading ``self.settings`` (a spider
  setting) or an attribute its ``from_crawler`` sets ran on a bare ``spidercls()`` and crashed the seed;
* an item ``start()`` yields is not stored (Fleet stores items per request): a warning, and
  ``start_items_dropped`` in the seed's JSON, instead of silence;
* a request the spider yields that cannot be queued (cb_kwargs no JSON) is ``discovered_rejected`` in the run's
  summary and exit 2 (it was exit 0 and only a log line without its URL); the summary's ``items`` are the items
  written (Scrapy's ``item_scraped_count`` also counted those of a page that then failed);
* spider arguments: ``-a NAME=VALUE`` on ``fleet seed``/``worker``/``run``, as ``scrapy crawl -a``; every worker's
  spider gets them;
* a spider module that fails to import (a SyntaxError) is a one-line error, as a missing one;
* `fleet export` of a run the store has neither a manifest nor an item of is exit 2 and writes nothing;
* item values JSON has no type for are written as Scrapy's feed exports write them: a set as a (sorted) list,
  datetimes in ISO 8601, Decimal as text, bytes as UTF-8 text.
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
import datetime
import decimal
import os

import scrapy

BASE = os.environ["USER_SPIDER_SITE"]


class UsesCrawler(scrapy.Spider):
    name = "uses_crawler"
    custom_settings = {"PAGES": 2}

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.base = BASE  # set here, as spiders that read settings do
        return spider

    async def start(self):
        yield {"kind": "from_start"}
        for i in range(self.settings.getint("PAGES")):
            yield scrapy.Request(f"{self.base}/p/{i}")

    def parse(self, response):
        yield {
            "path": response.url.rsplit("/", 1)[-1],
            "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
            "day": datetime.date(2026, 1, 2),
            "price": decimal.Decimal("7.50"),
            "tags": {"y", "x", "z"},
            "raw": b"bytes",
        }


class Rejects(scrapy.Spider):
    name = "rejects"
    start_urls = [f"{BASE}/list"]

    def parse(self, response):
        yield {"path": "list"}
        yield scrapy.Request(f"{BASE}/kw", callback=self.parse, cb_kwargs={"when": object()})  # no JSON: lost work
        yield scrapy.Request(f"{BASE}/boom", callback=self.parse_boom)

    def parse_boom(self, response):
        yield {"path": "boom"}  # through the pipelines, never stored: the callback then raises
        raise ValueError("boom")


class RejectsOnly(Rejects):
    name = "rejects_only"

    def parse_boom(self, response):
        yield {"path": "boom"}


class WithArgs(scrapy.Spider):
    name = "with_args"

    def __init__(self, cat, *args, **kwargs):  # a required argument, as `scrapy crawl with_args -a cat=...` gives
        super().__init__(*args, **kwargs)
        self.cat = cat

    async def start(self):
        yield scrapy.Request(f"{BASE}/c/{self.cat}")

    def parse(self, response):
        yield {"path": response.url.rsplit("/", 1)[-1], "cat": self.cat, "pages": getattr(self, "pages", None)}


class Rendered(scrapy.Spider):
    name = "rendered"
    render_js = True

    async def start(self):
        yield scrapy.Request(f"{BASE}/js")
'''


class _Site(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        loopback.reply(self, f"<title>{self.path}</title>".encode())


@pytest.fixture
def site() -> Iterator[str]:
    with loopback.serving(_Site) as url:
        yield url


def test_start_runs_on_a_spider_made_by_from_crawler(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "user_spiders", SPIDERS, USER_SPIDER_SITE=site)
    seeded = fleet("seed", "uses_crawler", "--run", "s1", env=env)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert json.loads(seeded.stdout) == {"spider": "uses_crawler", "run": "s1", "enqueued": 2, "skipped": 0,
                                         "start_items_dropped": 1}
    assert "start() yielded 1 item(s)" in seeded.stderr and "Traceback" not in seeded.stderr
    res = fleet("run", "uses_crawler", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    items = [json.loads(line) for f in sorted((tmp_path / "data").rglob("*.jsonl")) if "run=r1" in str(f)
             for line in f.read_text().splitlines()]
    assert sorted(i["path"] for i in items) == ["0", "1"], items
    for item in items:
        assert {k: item[k] for k in ("when", "day", "price", "tags", "raw")} == {
            "when": "2026-01-02T03:04:05", "day": "2026-01-02", "price": "7.50", "tags": ["x", "y", "z"],
            "raw": "bytes"}, item


def test_lost_requests_and_unstored_items_show_in_the_summary(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "user_spiders", SPIDERS, USER_SPIDER_SITE=site,
                            FLEET_LOG_FORMAT="json")
    res = fleet("run", "rejects_only", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    summary = json.loads(res.stdout)
    assert summary["discovered_rejected"] == 1 and summary["items"] == 2 and summary["dlq"] == 0, summary
    lines = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "request_rejected" and e.get("url") == f"{site}/kw" for e in lines), res.stderr[-3000:]
    res = fleet("run", "rejects", "--run", "r2", env=env, timeout=180)
    assert res.returncode == 4, (res.returncode, res.stderr[-3000:])  # the DLQ wins over exit 2
    summary = json.loads(res.stdout)
    assert summary["items"] == 1 and summary["discovered_rejected"] == 1, summary  # /boom's item was never stored


def test_export_of_a_run_the_store_does_not_have_is_exit_2_and_writes_nothing(redis_url: str, tmp_path: Path) -> None:
    from tests.fleetproc import fleet_env

    env = fleet_env(redis_url, tmp_path)
    res = fleet("export", "demo_shop", "--run", "nosuchrun", env=env)
    assert res.returncode == 2 and "no run 'nosuchrun' of spider 'demo_shop'" in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "data" / "exports").exists()


def test_a_spider_module_that_fails_to_import_is_one_line(redis_url: str, tmp_path: Path) -> None:
    env = spider_module_env(redis_url, tmp_path, "broken_spiders", "import scrapy\ndef oops(:\n    pass\n")
    res = fleet("spiders", env=env)
    assert res.returncode == 1 and "SyntaxError" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_spider_arguments_reach_start_and_every_worker(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "user_spiders", SPIDERS, USER_SPIDER_SITE=site)
    res = fleet("run", "with_args", "-a", "cat=books", "--arg", "pages=3", "--run", "r1", "--workers", "2",
                env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    items = [json.loads(line) for f in sorted((tmp_path / "data").rglob("*.jsonl")) for line in f.read_text().splitlines()]
    assert [(i["path"], i["cat"], i["pages"]) for i in items] == [("books", "books", "3")], items
    missing = fleet("run", "with_args", "--run", "r2", env=env)
    assert missing.returncode == 1 and "missing a required argument: 'cat'" in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    bad = fleet("seed", "with_args", "-a", "nonsense", env=env)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr, bad.stderr[-2000:]
    renamed = fleet("run", "with_args", "-a", "cat=x", "-a", "name=other", env=env)  # would work other's queue
    assert renamed.returncode == 2 and "the spider's own attribute" in renamed.stderr, renamed.stderr[-2000:]
    for args in (["worker", "with_args", "--until-idle", "1"], ["run", "with_args", "--resume", "r1"]):
        res = fleet(*args, env=env)  # no spider is made at seeding here: the signature says it, in one line
        assert res.returncode == 1 and "missing a required argument: 'cat'" in res.stderr, res.stderr[-2000:]
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_rendering_spider_is_seeded_without_chromium(redis_url: str, tmp_path: Path, site: str) -> None:
    """Seeding makes the spider but fetches nothing: no Chromium needed (only its workers need one)."""
    env = spider_module_env(redis_url, tmp_path, "user_spiders", SPIDERS, USER_SPIDER_SITE=site,
                            FLEET_CHROMIUM=str(tmp_path / "no-chromium"))
    res = fleet("seed", "rendered", "--run", "r1", env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["enqueued"] == 1, res.stderr[-2000:]

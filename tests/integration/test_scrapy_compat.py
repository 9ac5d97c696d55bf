"""Ordinary Scrapy features a compatibility probe (session of 2026-12-08) found Fleet losing or doubling, through the
real ``fleet run`` / ``fleet seed``:

* a request the spider queues outside any lease (``crawler.engine.crawl`` from a ``spider_idle`` handler) went into a
  hidden run "adhoc": its item outside the run's data, and skipped as SEEN in every later run. Now it joins the run
  of ``fleet worker --run`` (``fleet run`` passes its own) or of the worker's latest lease;
* ``DUPEFILTER_CLASS = "scrapy.dupefilters.BaseDupeFilter"`` (Scrapy's way to filter nothing) was ignored: a URL
  polled three times was fetched twice. Now every request the spider yields is queued as ``dont_filter``;
* a spider's own ``REQUEST_FINGERPRINTER_CLASS`` was ignored: URLs it counts as one page were fetched and stored
  once each. Now SEEN keys on its fingerprints (for discovered requests, redirects and seeded URLs);
* spider middlewares' ``process_start`` never ran at seeding (a start request one adds was missing), nor did
  Scrapy's StartSpiderMiddleware (``meta["is_start_request"]``);
* ``cb_kwargs`` with non-text dict keys (``{1: "one"}``) came back with text keys, so ``lookup.get(1)`` was None in
  every item, silently. Now such a request is refused where it is yielded (``discovered_rejected``, exit 2).
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
import os

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.request import RequestFingerprinter
from w3lib.url import url_query_cleaner

BASE = os.environ["COMPAT_SITE"]


class IdleFeeder(scrapy.Spider):
    """Feeds one more request when idle, the usual "next batch" idiom."""
    name = "idle_feeder"
    start_urls = [f"{BASE}/a", f"{BASE}/b"]

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.idle, signal=signals.spider_idle)
        spider.fed = False
        return spider

    def idle(self):
        if not self.fed:
            self.fed = True
            self.crawler.engine.crawl(scrapy.Request(f"{BASE}/extra", dont_filter=True))
            raise DontCloseSpider

    def parse(self, response):
        yield {"path": response.url.rsplit("/", 1)[-1]}


class Poller(scrapy.Spider):
    """Polls one URL three times: duplicate filtering off, as Scrapy's docs say."""
    name = "poller"
    custom_settings = {"DUPEFILTER_CLASS": "scrapy.dupefilters.BaseDupeFilter"}
    start_urls = [f"{BASE}/start"]

    def parse(self, response):
        yield scrapy.Request(f"{BASE}/api", callback=self.poll, cb_kwargs={"n": 0})

    def poll(self, response, n):
        yield {"poll": n}
        if n < 2:
            yield scrapy.Request(f"{BASE}/api", callback=self.poll, cb_kwargs={"n": n + 1})


class PollerSame(scrapy.Spider):
    """Three pages yield the same request: with filtering off, Scrapy fetches it three times (found by review)."""
    name = "poller_same"
    custom_settings = {"DUPEFILTER_CLASS": "scrapy.dupefilters.BaseDupeFilter"}
    start_urls = [f"{BASE}/p{i}" for i in range(3)]

    def parse(self, response):
        yield scrapy.Request(f"{BASE}/api", callback=self.api)

    def api(self, response):
        yield {"api": 1}


class IdleRepoll(scrapy.Spider):
    """Its idle handler polls the same feed twice (dont_filter): Scrapy fetches it each time (found by review)."""
    name = "idle_repoll"
    start_urls = [f"{BASE}/start"]

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.idle, signal=signals.spider_idle)
        spider.polls = 0
        return spider

    def idle(self):
        if self.polls < 2:
            self.polls += 1
            self.crawler.engine.crawl(scrapy.Request(f"{BASE}/feed", dont_filter=True))
            raise DontCloseSpider

    def parse(self, response):
        yield {"path": response.url.rsplit("/", 1)[-1]}


class NeedsEngine:
    """A spider middleware whose process_start needs a running crawl (found by review)."""

    def __init__(self, crawler):
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    async def process_start(self, start):
        self.crawler.engine.downloader  # raises outside a crawl
        async for x in start:
            yield x


class EngineMw(scrapy.Spider):
    name = "engine_mw"
    custom_settings = {"SPIDER_MIDDLEWARES": {f"{__name__}.NeedsEngine": 500}}
    start_urls = [f"{BASE}/e"]

    def parse(self, response):
        yield {"path": "e"}


class IntFp(RequestFingerprinter):
    def fingerprint(self, request):
        return 5  # not bytes: every request would be one


class BadFp(scrapy.Spider):
    name = "bad_fp"
    custom_settings = {"REQUEST_FINGERPRINTER_CLASS": IntFp}
    start_urls = [f"{BASE}/a"]


class NoSid(RequestFingerprinter):
    def fingerprint(self, request):
        return super().fingerprint(request.replace(url=url_query_cleaner(request.url, ["sid"], remove=True)))


class Tracked(scrapy.Spider):
    """Its fingerprinter ignores a tracking parameter: /about?sid=... is one page."""
    name = "tracked"
    custom_settings = {"REQUEST_FINGERPRINTER_CLASS": NoSid}
    start_urls = [f"{BASE}/list"]

    def parse(self, response):
        for sid in ("a1", "b2", "c3"):
            yield scrapy.Request(f"{BASE}/about?sid={sid}", callback=self.about)

    def about(self, response):
        yield {"page": "about"}


class AddsStart:
    """A spider middleware that adds a start request (Scrapy >= 2.13's process_start)."""

    async def process_start(self, start):
        async for x in start:
            yield x
        yield scrapy.Request(f"{BASE}/added")


class StartMw(scrapy.Spider):
    name = "start_mw"
    custom_settings = {"SPIDER_MIDDLEWARES": {f"{__name__}.AddsStart": 500}}
    start_urls = [f"{BASE}/s"]

    def parse(self, response):
        yield {"path": response.url.rsplit("/", 1)[-1], "start": response.meta.get("is_start_request")}


class IntKeys(scrapy.Spider):
    name = "int_keys"
    start_urls = [f"{BASE}/list"]

    def parse(self, response):
        yield scrapy.Request(f"{BASE}/x", callback=self.x, cb_kwargs={"lookup": {1: "one"}})
        yield scrapy.Request(f"{BASE}/y", callback=self.x, cb_kwargs={"lookup": {"1": "one"}, "pos": (1, 2)})

    def x(self, response, lookup, pos=None):
        yield {"one": lookup.get("1"), "pos": pos}
'''


class _Site(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        _Site.hits.append(self.path)
        loopback.reply(self, f"<title>{self.path}</title>".encode())


@pytest.fixture
def site() -> Iterator[str]:
    _Site.hits = []
    with loopback.serving(_Site) as url:
        yield url


def _items(tmp_path: Path, run: str) -> list[dict[str, Any]]:
    """The run's items as stored, without Fleet's ``_meta``."""
    rows = [json.loads(line) for f in sorted((tmp_path / "data").rglob("*.jsonl")) if f"run={run}" in str(f)
            for line in f.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "_meta"} for row in rows]


def test_a_request_queued_from_spider_idle_joins_the_run(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    for run in ("r1", "r2"):  # the second run too: nothing of the first is taken for SEEN
        res = fleet("run", "idle_feeder", "--run", run, env=env, timeout=180)
        assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
        assert json.loads(res.stdout)["items"] == 3, res.stdout
        assert sorted(i["path"] for i in _items(tmp_path, run)) == ["a", "b", "extra"]
    assert not [p for p in (tmp_path / "data").rglob("*") if "run=adhoc" in str(p)]


def test_base_dupefilter_fetches_every_request(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("run", "poller", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert sorted(i["poll"] for i in _items(tmp_path, "r1")) == [0, 1, 2]
    assert _Site.hits.count("/api") == 3, _Site.hits


def test_the_spiders_own_fingerprinter_decides_duplicates(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("run", "tracked", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert [p for p in _Site.hits if p.startswith("/about")] == ["/about?sid=a1"], _Site.hits
    assert _items(tmp_path, "r1") == [{"page": "about"}]
    # a seeded URL is fingerprinted by it too: a link to it with another sid is known SEEN
    seeded = fleet("seed", "tracked", "--run", "r2", "--url", f"{site}/about?sid=zz", env=env)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    again = fleet("seed", "tracked", "--run", "r2", "--url", f"{site}/about?sid=yy", env=env)
    assert json.loads(again.stdout)["skipped"] == 1, again.stdout


def test_cb_kwargs_with_non_text_keys_are_refused_not_changed(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site, FLEET_LOG_FORMAT="json")
    res = fleet("run", "int_keys", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    summary = json.loads(res.stdout)
    assert summary["discovered_rejected"] == 1, summary
    assert _items(tmp_path, "r1") == [{"one": "one", "pos": [1, 2]}]
    assert "text dict keys" in res.stderr, res.stderr[-3000:]


def test_start_requests_go_through_the_spider_middlewares(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("run", "start_mw", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert sorted((i["path"], i["start"]) for i in _items(tmp_path, "r1")) == [("added", True), ("s", True)]


def test_filtering_off_fetches_identical_requests_of_several_pages(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("run", "poller_same", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert _Site.hits.count("/api") == 3 and len(_items(tmp_path, "r1")) == 3, _Site.hits


def test_an_idle_handler_polling_one_feed_fetches_it_each_time(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("run", "idle_repoll", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert _Site.hits.count("/feed") == 2, _Site.hits


def test_a_middleware_that_needs_the_engine_leaves_start_as_it_is(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("run", "engine_mw", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert "process_start not applied" in res.stderr and _items(tmp_path, "r1") == [{"path": "e"}]


def test_a_fingerprinter_that_returns_no_bytes_is_refused(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site)
    res = fleet("seed", "bad_fp", "--run", "r1", env=env)
    assert res.returncode == 1 and "not bytes" in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # a spider's configuration error: one line


def test_replay_by_url_finds_the_page_under_the_spiders_fingerprint(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "compat_spiders", SPIDERS, COMPAT_SITE=site, FLEET_STORE_RAW="all")
    res = fleet("run", "tracked", "--run", "r1", env=env, timeout=180)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    replay = fleet("replay", "tracked", "--url", f"{site}/about?sid=zz", "--run", "r1", env=env, timeout=120)
    assert replay.returncode == 0, (replay.returncode, replay.stderr[-3000:])

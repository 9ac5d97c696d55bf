"""The plain-Scrapy side of the bench: demo_shop's parsing code under stock or tuned engine settings.

Run as ``python -m scrapy.cmdline runspider tests/bench/plain_spider.py -o out.jsonl``; the variant
comes from ``BENCH_VARIANT``:

* ``stock``  — Scrapy's defaults (in-memory LIFO scheduler, DEBUG logging, cookies, telnet, logstats),
  only the concurrency raised to the bench's 32 (CONCURRENT_REQUESTS and _PER_DOMAIN);
* ``tuned``  — the engine settings Fleet's ``settings/__init__.py`` runs with (CONCURRENT_ITEMS=8,
  cookies/telnet/logstats/retry off, INFO logging, ...) and the GC tuning a Fleet worker applies
  (``scraper.worker.tuning``), still Scrapy's own scheduler;
* ``redis``  — vanilla scrapy-redis 0.9.1: its Scheduler, RFPDupeFilter and default PriorityQueue on
  ``BENCH_REDIS_URL``, engine settings as ``stock``.

``Probe`` (an extension) records the wall-clock time of every ``response_received`` signal and writes
them to ``BENCH_PROBE_OUT`` when the spider closes: the same "a page was fetched" instant Fleet logs
as ``request_fetched``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from scrapy import signals

from scraper.spiders.demo_shop import DemoShopSpider
from scraper.worker.tuning import tune_gc

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
VARIANT = os.environ.get("BENCH_VARIANT", "stock")

# The subset of settings/__init__.py that changes how fast the engine runs, minus what only makes
# sense with Fleet's own scheduler/middlewares (SCHEDULER, DUPEFILTER_CLASS, SPIDER/DOWNLOADER_MIDDLEWARES).
FLEET_ENGINE_SETTINGS: dict[str, Any] = {
    "CONCURRENT_ITEMS": 8,
    "DOWNLOAD_DELAY": 0,
    "DOWNLOAD_TIMEOUT": 30,
    "COOKIES_ENABLED": False,
    "TELNETCONSOLE_ENABLED": False,
    "LOGSTATS_INTERVAL": 0,
    "ROBOTSTXT_OBEY": False,
    "REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7",
    "RETRY_ENABLED": False,
    "HTTPERROR_ALLOW_ALL": True,
    "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    "LOG_LEVEL": "INFO",
}

PROBE = {"tests.bench.plain_spider.Probe": 0}


class Probe:
    """Timestamps of every fetched response, dumped as JSON at close."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ts: list[float] = []
        self.list_ts: list[float] = []
        self.items = 0

    @classmethod
    def from_crawler(cls, crawler: Any) -> Probe:
        ext = cls(os.environ["BENCH_PROBE_OUT"])
        crawler.signals.connect(ext.response_received, signal=signals.response_received)
        crawler.signals.connect(ext.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        return ext

    def response_received(self, response: Any = None, **_: Any) -> None:
        now = time.time()
        self.ts.append(now)
        if response is not None and "/catalogue/" in response.url:  # the pagination chain's pages
            self.list_ts.append(now)

    def item_scraped(self, **_: Any) -> None:
        self.items += 1

    def spider_opened(self, **_: Any) -> None:
        if VARIANT == "tuned":  # the process tuning a Fleet worker applies when its spider opens
            tune_gc()

    def spider_closed(self, **_: Any) -> None:
        with open(self.path, "w") as fh:
            json.dump({"fetch_ts": self.ts, "list_ts": self.list_ts, "items": self.items}, fh)


def _settings() -> dict[str, Any]:
    base: dict[str, Any] = {
        "CONCURRENT_REQUESTS": CONCURRENCY,
        "CONCURRENT_REQUESTS_PER_DOMAIN": CONCURRENCY,
        "EXTENSIONS": dict(PROBE),
    }
    if VARIANT == "tuned":
        base.update(FLEET_ENGINE_SETTINGS)
        # as settings/__init__.py: no telnet console, no remote-control port
        base["EXTENSIONS"]["scrapy.extensions.telnet.TelnetConsole"] = None
        base["EXTENSIONS"]["scrapy.extensions.remote_control.RemoteControl"] = None
    elif VARIANT == "redis":
        base.update(
            SCHEDULER="scrapy_redis.scheduler.Scheduler",
            DUPEFILTER_CLASS="scrapy_redis.dupefilter.RFPDupeFilter",
            REDIS_URL=os.environ["BENCH_REDIS_URL"],
            SCHEDULER_FLUSH_ON_START=True,
        )
    elif VARIANT != "stock":
        raise ValueError(f"BENCH_VARIANT={VARIANT!r}: expected stock, tuned or redis")
    return base


class BenchPlainSpider(DemoShopSpider):
    """demo_shop's own callbacks (same selectors, same items), started from BENCH_START_URL."""

    name = "bench_plain"
    custom_settings = _settings()

    def start_url(self) -> str:
        return os.environ["BENCH_START_URL"]

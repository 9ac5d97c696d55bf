"""Downloader middleware: robots.txt, fetched once for the fleet, obeyed with typed outcomes.

Why not Scrapy's RobotsTxtMiddleware (which settings/ switches off for this one): it fetches each site's
robots.txt once per *process*, so a fleet of N workers fetched it N times (and again after each restart),
and a disallowed request was a bare ``IgnoreRequest`` that Fleet finishes as "ignored": acknowledged,
with no trace in the DLQ of why a queued URL was never fetched.

Here, with ``ROBOTSTXT_OBEY`` on (the setting keeps its meaning; off: NotConfigured, as Scrapy's):

* the body is fetched by one worker for the whole fleet and shared through Redis for FLEET_ROBOTS_TTL
  seconds (scraper.worker.robots, scraper.queue.robots); each worker parses it with the spider's
  ``ROBOTSTXT_PARSER`` (Protego by default) for ``ROBOTSTXT_USER_AGENT`` (or the request's User-Agent),
  as Scrapy does;
* a disallowed request raises :class:`~scraper.policy.refused.RobotsDisallowed`: class D
  ``policy:robots``, one DLQ entry whose ``detail`` says which version of the file decided (status,
  size, sha256, fetch time, fetching worker); the URL is the entry's own field;
* a robots.txt that cannot be fetched (5xx, 429, network error) raises
  :class:`~scraper.policy.robots.RobotsUnavailable`: class A ``robots:unavailable``, retried on the A
  budget (scraper.policy.robots says why not "allow all");
* the file's ``Crawl-delay`` for the user agent (capped at 60 s) becomes the site's minimum spacing for
  the whole fleet: the politeness gate (scraper.worker.gate) spaces its later requests across every
  worker (``FleetPort.crawl_delay``), and stays the minimum delay of this worker's download slot for that
  site (scraper.worker.adapter.space_slot): the requests that passed the gate before robots.txt was read
  are spaced by it, and a slot that already waited at the gate adds next to nothing.

Outside a Fleet worker (plain ``scrapy crawl``: no runtime, no Redis) the file is fetched once per process
and an unfetchable one allows everything, as with Scrapy's middleware. The ``robots_parsed`` signal is
not sent; the ``robotstxt/*`` stats keep Scrapy's names.
"""

from __future__ import annotations

import math
import time
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import build_from_crawler, load_object

from scraper.infra.config import FleetConfig
from scraper.policy.refused import RobotsDisallowed
from scraper.policy.robots import (
    FETCH_MAXSIZE,
    MAX_CRAWL_DELAY,
    UNAVAILABLE,
    RobotsRecord,
    RobotsUnavailable,
    record_for_error,
    record_for_response,
)
from scraper.policy.taxonomy import D, Verdict, classify_exception
from scraper.queue.robots import RobotsStore
from scraper.worker.adapter import space_slot
from scraper.worker.ports import FleetPort, fleet_of
from scraper.worker.robots import ROBOTS_WAIT_KEY, RobotsResolver

__all__ = ["FleetRobotsMiddleware"]

_SCHEMES = frozenset({"http", "https"})


def origin_of(request: Request) -> str | None:
    """``scheme://host[:port]`` of an http(s) request (no credentials): the scope of one robots.txt."""
    parsed = urlparse_cached(request)
    if parsed.scheme not in _SCHEMES or not parsed.hostname:
        return None
    return f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2].lower()}"


class FleetRobotsMiddleware:
    DOWNLOAD_PRIORITY = 1000  # as Scrapy's: the robots.txt request goes ahead of the site's pages

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        if not settings.getbool("ROBOTSTXT_OBEY"):
            raise NotConfigured
        self.crawler = crawler
        self.stats = crawler.stats
        self._default_useragent: str = settings["USER_AGENT"]
        self._robotstxt_useragent: str | None = settings["ROBOTSTXT_USER_AGENT"]
        self._parserimpl: Any = load_object(settings.get("ROBOTSTXT_PARSER"))
        build_from_crawler(self._parserimpl, crawler, b"")  # fails now if the parser's library is missing
        config = FleetConfig.from_env()
        self.ttl = config.robots_ttl
        self.worker_id = config.worker_id
        # the lock outlives the fetch it guards: one download timeout, plus room for the Redis writes
        self.resolver = RobotsResolver(self._fetch, self._parse,
                                       lock_seconds=settings.getfloat("DOWNLOAD_TIMEOUT", 180.0) + 10.0)
        self._spaced: set[str] = set()  # origins whose Crawl-delay was logged

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FleetRobotsMiddleware:
        return cls(crawler)

    def _runtime(self) -> FleetPort | None:
        """The Fleet runtime, once open (the resolver then shares records through its Redis client)."""
        rt = fleet_of(self.crawler)
        if rt is not None and rt.client is not None and self.resolver.store is None:
            self.resolver.store = RobotsStore(rt.client)
            self.resolver.log = rt.log
        return rt

    async def process_request(self, request: Request) -> None:
        if request.meta.get("dont_obey_robotstxt"):
            return
        origin = origin_of(request)
        if origin is None:
            return
        rt = self._runtime()
        request.meta[ROBOTS_WAIT_KEY] = True
        try:
            entry = await self.resolver.entry(origin)
        finally:
            request.meta.pop(ROBOTS_WAIT_KEY, None)
        record = entry.record
        if record.kind == UNAVAILABLE:
            if rt is None:
                return  # plain Scrapy: an unfetchable robots.txt allows everything, as Scrapy's middleware
            raise RobotsUnavailable(f"robots.txt of {origin} could not be fetched ({record.note})",
                                    retry_after=max(1.0, record.expires_at - time.time()))
        parser = entry.parser
        if parser is None:
            return
        useragent = self._useragent(request)
        if not parser.allowed(request.url, useragent):
            self.stats.inc_value("robotstxt/forbidden")
            raise RobotsDisallowed(f"robots.txt of {origin} disallows it for user agent {useragent[:80]!r}: "
                                   f"{record.evidence()}")
        delay = parser.crawl_delay(useragent)
        if delay and math.isfinite(delay) and delay > 0:
            delay = min(float(delay), MAX_CRAWL_DELAY)
            # the fleet's spacing for the site's later requests (they wait at the gate), and this worker's
            # slot too: requests already past the gate when robots.txt was read are spaced by it
            fleet = rt is not None and rt.crawl_delay(request, delay)
            if (space_slot(self.crawler, request, delay) or fleet) and rt is not None and origin not in self._spaced:
                if len(self._spaced) >= 10_000:  # bounded: only the log line depends on it
                    self._spaced.clear()
                self._spaced.add(origin)
                rt.log.info("robots_crawl_delay", origin=origin, delay=delay)

    def _useragent(self, request: Request) -> str:
        ua: str | bytes | None = self._robotstxt_useragent or request.headers.get(b"User-Agent")
        ua = ua or self._default_useragent or ""
        return ua.decode("latin-1") if isinstance(ua, bytes) else str(ua)

    def _parse(self, body: bytes) -> Any:
        return build_from_crawler(self._parserimpl, self.crawler, body)

    async def _fetch(self, origin: str) -> RobotsRecord:
        """GET ``origin``/robots.txt through the engine (every downloader middleware: proxies, the
        private-address guard, redirects), bounded by FETCH_MAXSIZE."""
        request = Request(f"{origin}/robots.txt", priority=self.DOWNLOAD_PRIORITY, callback=NO_CALLBACK,
                          dont_filter=True, meta={"dont_obey_robotstxt": True, "download_maxsize": FETCH_MAXSIZE,
                                                  "download_warnsize": FETCH_MAXSIZE})
        engine = self.crawler.engine
        assert engine is not None
        self.stats.inc_value("robotstxt/request_count")
        try:
            response = await engine.download_async(request)
        except Exception as exc:
            self.stats.inc_value(f"robotstxt/exception_count/{type(exc).__name__}")
            verdict = (Verdict(D, "dropped:IgnoreRequest") if type(exc) is IgnoreRequest  # dropped on purpose
                       else classify_exception(exc, proxied=bool(request.meta.get("proxy"))))
            return record_for_error(verdict, ttl=self.ttl, worker=self.worker_id)
        self.stats.inc_value("robotstxt/response_count")
        self.stats.inc_value(f"robotstxt/response_status_count/{response.status}")
        return record_for_response(response.status, response.body, ttl=self.ttl, worker=self.worker_id)

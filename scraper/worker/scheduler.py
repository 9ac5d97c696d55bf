"""Scrapy scheduler backed by the leased Redis queue.

Why not scrapy-redis's scheduler: it pops without acknowledgement (a crash loses the request), pickles
by default, and its dupefilter marks URLs seen at enqueue so a lost request is never retried. This
scheduler implements Scrapy's ``BaseScheduler`` interface over :class:`scraper.worker.runtime.FleetRuntime`:
``next_request`` serves from a prefetched local buffer of leases (never blocks the reactor), and the
spider stays open while the fleet may still produce work.

It creates the runtime and attaches it to the crawler (scraper.worker.ports), and calls it only through
:class:`scraper.worker.ports.FleetPort`, like every other component.
"""

from __future__ import annotations

import secrets
from collections import deque

from scrapy import Request, Spider, signals
from scrapy.core.scheduler import BaseScheduler
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.defer import Deferred

from scraper.infra.config import FleetConfig
from scraper.infra.embedded import resolve_redis_url
from scraper.infra.redact import redact_request_url
from scraper.queue.entrycheck import EnvelopeError
from scraper.queue.envelope import META_KEY, Envelope
from scraper.queue.names import is_name
from scraper.queue.startfp import start_fp
from scraper.worker.catalog import NO_DEDUP
from scraper.worker.ledger import LeaseState
from scraper.worker.ports import FleetPort, attach
from scraper.worker.runtime import FleetRuntime

__all__ = ["FleetScheduler"]


class FleetScheduler(BaseScheduler):
    def __init__(self, crawler: Crawler, runtime: FleetPort) -> None:
        self.crawler = crawler
        self.rt = runtime
        # Requests that continue an existing lease (redirects) are served before new leases.
        self.direct: deque[Request] = deque()
        # the run of the latest request handed to the engine: the run of requests queued outside any lease
        # when neither their meta nor the worker (`fleet worker --run`, setting FLEET_RUN) names one
        self.latest_run: str | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FleetScheduler:
        config = FleetConfig.from_env()
        url = crawler.settings.get("FLEET_REDIS_URL") or resolve_redis_url()
        runtime: FleetPort = FleetRuntime(crawler, config, url)  # mypy: the runtime satisfies the port
        attach(crawler, runtime)
        sched = cls(crawler, runtime)
        crawler.signals.connect(sched._on_idle, signal=signals.spider_idle)
        return sched

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self.rt.open(spider))

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self.rt.close(reason))

    def has_pending_requests(self) -> bool:
        return bool(self.direct) or (bool(self.rt.buffer) and not self.rt.stopping)

    def enqueue_request(self, request: Request) -> bool:
        state = self.rt.state_for(request)
        if state is not None and not state.settled:
            # a redirect: Scrapy's offsite and dupefilter checks, made against the run (scraper.worker.redirects)
            return self.rt.continued(state, request, self._follow)
        if isinstance(request.meta.get(META_KEY), str):
            # a continuation of a lease this worker no longer holds: the live delivery redoes it
            self.rt.log.warning("stale_request_dropped", lease=request.meta.get(META_KEY))
            return False
        # A request outside any lease (e.g. from a spider_idle handler): straight to Redis.
        self.rt.spawn(self._enqueue_orphan(request))
        return True

    def _follow(self, state: LeaseState, request: Request) -> None:
        state.request = request
        self.direct.append(request)

    async def _enqueue_orphan(self, request: Request) -> None:
        assert self.rt.queue is not None and self.rt.spider is not None
        named = request.meta.get("fleet_run") or self.crawler.settings.get("FLEET_RUN")
        run = str(named or self.latest_run or "")
        if not run:
            # no run to put it in: it would be crawled and stored outside every run the operator knows
            self._reject(request, "queued outside any lease before this worker leased a request, so no run is "
                                  "known: give it meta['fleet_run'] or start the worker with --run RUN")
            return
        if not is_name(run):  # it becomes part of Redis and object keys (scraper.queue.names)
            self._reject(request, f"meta fleet_run {run[:60]!r} is not a run id")
            return
        try:
            env = Envelope.from_request(
                request, spider_name=self.rt.spider.name, run=run, spider=self.rt.spider
            )
        except EnvelopeError as exc:
            self._reject(request, str(exc))
            return
        if env.dont_filter or self.crawler.settings.getbool(NO_DEDUP):
            # Scrapy fetches every such request, however often the spider asks (an idle handler polling one
            # feed): one fingerprint per call, not the start fingerprint that makes identical ones one request
            env.dont_filter = True
            env.fp = start_fp(env, salt=secrets.token_hex(8))
        enqueued, _ = await self.rt.queue.seed(run, [env])
        if not enqueued:  # SEEN in the run: as Scrapy's dupefilter drops it, but said
            self.rt.log.info("request_skipped_seen", run=run, fp=env.fp, url=redact_request_url(request.url)[:200])

    def _reject(self, request: Request, reason: str) -> None:
        """A request outside any lease that cannot be queued: counted as the spider's discovered requests that
        could not be (``fleet/discovered_rejected``), one error line each."""
        self.rt.stats.inc_value("fleet/discovered_rejected")
        self.rt.log.error("request_rejected", url=redact_request_url(request.url)[:200], reason=reason)

    def next_request(self) -> Request | None:
        if self.direct:
            return self.direct.popleft()
        if self.rt.stopping:
            return None
        state = self.rt.next_state()
        if state is None:
            return None
        self.latest_run = state.env.run
        return state.request

    def _on_idle(self, spider: Spider) -> None:
        if not self.rt.may_close():
            raise DontCloseSpider



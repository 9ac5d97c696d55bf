"""The stall watchdog: no leased request is held by a live worker without progress.

Why: the keeper heartbeats every lease this worker holds, so a request that something inside Scrapy holds
forever (a downloader middleware whose Deferred never fires, a callback awaiting something that never
comes, a component that swallowed it) keeps its lease forever: no retry, no DLQ entry, and ``--until-idle``
never fires. The catch-all (:mod:`scraper.worker.settle`) settles every request that fails; this settles the
ones that neither fail nor finish.

Every ``interval`` the watchdog looks at each unsettled lease the worker holds and at its progress: its
current request (a redirect is a new one), the response status, items and requests produced and settled,
and where the request is (:meth:`scraper.worker.settle.FleetDownloader.phase`). A request waiting for a download
slot (DOWNLOAD_DELAY, per-slot concurrency), for the engine to take it, for a browser page or for its
site's robots.txt (whose fetch queues behind the site's Crawl-delay) is not stalled: its clock restarts.
One that has made no progress for longer than its download timeout (``download_timeout`` meta, else
DOWNLOAD_TIMEOUT) plus ``FLEET_WATCHDOG_MARGIN`` seconds is settled as class A ``watchdog:stalled``
(retried with backoff, then the DLQ with ``exhausted:A``), with the phase, idle time and progress
counters as evidence in the log (``request_stalled``), the lease history and the DLQ detail. Its fetch is
marked void (a late answer is dropped, the spider's errback is not called) and cancelled if it is still
in the downloader, so the engine lets go of it.

Limits: a callback stuck in an ``await`` cannot be cancelled from outside (Scrapy owns that task); its
lease is settled, but the engine keeps the response until the callback returns, and a worker with such
a zombie closes only on a signal. Speculative fetches whose claim Redis has not answered are left to
the Redis outage handling. A Scrapy setting, so a spider may change it in ``custom_settings``; a
negative value switches the watchdog off.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from scraper.policy.taxonomy import A, Verdict
from scraper.worker.adapter import engine_holds
from scraper.worker.ledger import VOID_KEY
from scraper.worker.ports import FleetPort, fleet_of
from scraper.worker.robots import ROBOTS_WAIT_KEY

if TYPE_CHECKING:
    from scraper.worker.ledger import LeaseState

__all__ = ["DEFAULT_MARGIN", "Watchdog"]

DEFAULT_MARGIN = 30.0
# the phases in which a request waits for its turn (its clock restarts), see FleetDownloader.phase
_WAITING = frozenset({"queued", "scheduled", "page_wait", "robots_wait"})


class Watchdog:
    def __init__(self, crawler: Crawler, margin: float) -> None:
        self.crawler = crawler
        self.margin = margin
        self.interval = max(0.1, min(1.0, margin / 4))
        self.default_timeout = crawler.settings.getfloat("DOWNLOAD_TIMEOUT", 180.0)
        # lease id -> (its state, progress signature, monotonic time the signature last changed)
        self._seen: dict[str, tuple[Any, tuple[Any, ...], float]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Watchdog:
        margin = crawler.settings.getfloat("FLEET_WATCHDOG_MARGIN", DEFAULT_MARGIN)
        if margin < 0:
            raise NotConfigured("FLEET_WATCHDOG_MARGIN < 0")
        wd = cls(crawler, margin)
        crawler.signals.connect(wd._opened, signal=signals.spider_opened)
        crawler.signals.connect(wd._closed, signal=signals.spider_closed)
        return wd

    def _opened(self, spider: Spider) -> None:
        self._task = asyncio.ensure_future(self._run())

    def _closed(self, spider: Spider, reason: str) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check(time.monotonic())
            except Exception as exc:  # never let one bad state stop the watchdog
                rt = fleet_of(self.crawler)
                if rt is not None:
                    rt.log.error("watchdog_error", error=repr(exc)[:300])

    def _phase(self, state: Any, engine: Any) -> str:
        request = state.request
        downloader: Any = getattr(engine, "downloader", None)
        phase: str = downloader.phase(request) if hasattr(downloader, "phase") else "unknown"
        if phase != "out":
            return phase
        return engine_holds(engine, request)  # scheduled, scraping or limbo

    def check(self, now: float) -> list[str]:
        """One look at every unsettled lease; settles the stalled ones and returns their lease ids."""
        rt = fleet_of(self.crawler)
        engine = self.crawler.engine
        if rt is None or engine is None or rt.stopping or rt.releasing or rt.fatal:
            self._seen = {}
            return []
        seen: dict[str, tuple[Any, tuple[Any, ...], float]] = {}
        stalled: list[str] = []
        for lid, state in list(rt.active.items()):
            request = state.request
            if state.settled or state.claim is not None or request is None:
                continue
            phase = self._phase(state, engine)
            meta = request.meta
            if meta.get("_fleet_page_wait"):
                phase = "page_wait"  # a rendered page waiting for one of the context's browser pages
            elif meta.get(ROBOTS_WAIT_KEY):
                phase = "robots_wait"  # its site's robots.txt: a fetch that may queue behind a Crawl-delay
            sig = (id(request), phase, state.status, state.pending, len(state.items),
                   len(state.discovered), state.exhausted, meta.get("_fleet_page_at"))
            prev = self._seen.get(lid)
            if prev is None or prev[0] is not state or prev[1] != sig or phase in _WAITING:
                since = now
            else:
                since = prev[2]
            seen[lid] = (state, sig, since)
            limit = float(request.meta.get("download_timeout") or self.default_timeout) + self.margin
            if now - since > limit:
                self._stall(rt, engine, state, request, phase, now - since, limit)
                stalled.append(lid)
                del seen[lid]
        self._seen = seen
        return stalled

    def _stall(
        self, rt: FleetPort, engine: Any, state: LeaseState, request: Request, phase: str, idle: float, limit: float
    ) -> None:
        hops = len(request.meta.get("redirect_urls", ()))
        detail = (f"phase={phase} idle_s={idle:.1f} limit_s={limit:.1f} status={state.status} hops={hops} "
                  f"items={len(state.items)} pending={state.pending} discovered={len(state.discovered)}")
        rt.stats.inc_value("fleet/stalled")
        rt.log.warning("request_stalled", run=state.env.run, fp=state.env.fp, phase=phase,
                       idle_s=round(idle, 1), limit_s=round(limit, 1), status=state.status, hops=hops,
                       items=len(state.items), pending=state.pending)
        # its late outcome, if any, belongs to nobody: dropped like a void speculative fetch
        request.meta[VOID_KEY] = True
        request.errback = None
        rt.fail(state, Verdict(A, "watchdog:stalled", detail=detail), None)
        downloader: Any = getattr(engine, "downloader", None)
        if hasattr(downloader, "cancel"):
            downloader.cancel(request)

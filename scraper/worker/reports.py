"""What Scrapy's side reports about a leased request, and the one moment it is settled.

The downloader middlewares report how its fetch ended (``fetched``, ``fail``, ``defer``, ``ignored``), the
spider middleware and the object pipeline how its output went (``item_*``, ``output_done``,
``callback_failed``). Each report updates the request's ledger record; the one that leaves it finished
marks it settled, exactly once, and hands it on: the ok path to scraper.worker.finisher, a failure to
scraper.worker.failures (as scraper.policy.decide decides), an ignored request to the committer's ack.

Why apart from the facade: these are the calls made once per page, each a small step of the same
concern (when is a request done, and whose is it then); the runtime only wires them (its FleetPort
methods are these bound methods) and keeps the worker's lifecycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from scrapy.exceptions import CloseSpider
from scrapy.http import Response

from scraper.policy.taxonomy import B, Verdict
from scraper.worker.committer import Committer, Flags
from scraper.worker.discovery import Discovery
from scraper.worker.failures import FailureApplier, now_iso
from scraper.worker.finisher import Finisher
from scraper.worker.gating import Gating
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.proxies import ProxyPool

__all__ = ["Reports"]


class Reports:
    def __init__(self, ledger: Ledger, flags: Flags, gating: Gating, *, finisher: Finisher,
                 failures: FailureApplier, committer: Committer, discovery: Discovery,
                 spawn: Callable[[Any], None], stats: Any, log: Any,
                 stop: Callable[[str], None] = lambda reason: None) -> None:
        self.ledger = ledger
        self.stop = stop  # the worker's graceful stop (FleetRuntime.request_stop)
        self.flags = flags
        self.gating = gating  # the politeness gate, if any: a permit goes back when its fetch ends
        self.finisher = finisher
        self.failures = failures
        self.committer = committer
        self.discovery = discovery
        self.spawn = spawn
        self.stats = stats
        self.log = log
        self.proxies: ProxyPool = ProxyPool([])  # set when the spider opens

    # -- the downloader side ----------------------------------------------------------------------

    def fetched(self, state: LeaseState, response: Response, verdict: Verdict) -> None:
        fetch = state.fetch
        fetch.status = response.status
        fetch.fetched_at = now_iso()
        fetch.body = response.body
        fetch.ctype = response.headers.get(b"Content-Type")
        self.gating.done(state, "bad" if response.status in (429, 503) or verdict.cls == B else "ok")
        elapsed = int((time.monotonic() - fetch.started) * 1000)
        if fetch.proxy_id and self.proxies:
            self.proxies.finished(fetch.proxy_id)
            if verdict.cls != B:
                self.proxies.success(fetch.proxy_id, state.env.domain, float(elapsed))
        self.log.info(
            "request_fetched", run=state.env.run, fp=state.env.fp, status=response.status,
            elapsed_ms=elapsed, attempt=state.lease.deliveries, proxy=fetch.proxy_id,
        )

    def defer(self, state: LeaseState, until: float, reason: str) -> None:
        """Put a request back in DELAYED without using any budget (e.g. every proxy cooling)."""
        if state.settled:
            return
        state.settled = True
        self.gating.done(state, "none")
        self.stats.inc_value("fleet/deferred")
        self.log.info("request_deferred", run=state.env.run, fp=state.env.fp, reason=reason,
                      until=round(until, 3))
        self.spawn(self.failures.defer(state, until))

    def ignored(self, state: LeaseState, exc: BaseException) -> None:
        """Another component dropped the request (offsite, robots…): nothing to retry; ack it.

        Not once the worker hands its leases back (as ``fail``): a fetch cut short by the shutdown (a browser
        page closed under Playwright ends as IgnoreRequest) is released, not ignored, and was counted as
        ignored in the run's summary and manifest."""
        if state.settled or self.flags.releasing:
            return
        state.settled = True
        self.gating.done(state, "none")  # robots.txt, offsite: no fetch, no measure
        self.stats.inc_value("fleet/ignored")
        self.log.info("request_ignored", run=state.env.run, fp=state.env.fp, reason=str(exc)[:200])
        self.committer.ack_only(state)

    def fail(self, state: LeaseState, verdict: Verdict, response: Response | None) -> None:
        if state.settled or self.flags.releasing:
            return
        state.settled = True
        # a timeout or a block slows the domain down (AIMD)
        self.gating.done(state, "bad" if verdict.cls == B or "Timeout" in verdict.reason else "none")
        if response is None and state.fetch.proxy_id and self.proxies:
            self.proxies.finished(state.fetch.proxy_id)
        self.stats.inc_value(f"fleet/class/{verdict.cls}")
        self.log.info(
            "request_classified", run=state.env.run, fp=state.env.fp, cls=verdict.cls,
            reason=verdict.reason, attempt=state.lease.deliveries,
            **({"detail": verdict.detail} if verdict.detail else {}),
        )
        self.spawn(self.failures.settle(state, verdict, response))

    # -- the spider side --------------------------------------------------------------------------

    def item_started(self, state: LeaseState, item: Any) -> None:
        self.ledger.item_out(state, item)

    def item_passed(self, yielded: Any, item: Any) -> None:
        """``yielded`` left the pipelines as ``item`` (the object written: what the user's left)."""
        state = self.ledger.item_back(yielded)
        if state is not None:
            state.out.items.append(item)
            self.maybe_finish(state)

    def item_dropped(self, yielded: Any) -> None:
        state = self.ledger.item_back(yielded)
        if state is not None:
            self.maybe_finish(state)

    def item_failed(self, yielded: Any, exc: BaseException) -> None:
        """A pipeline raised: the request is not finished cleanly, so it is not acknowledged as ok."""
        state = self.ledger.item_back(yielded)
        if state is not None:
            state.out.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self.maybe_finish(state)

    def output_done(self, state: LeaseState) -> None:
        state.out.exhausted = True
        self.maybe_finish(state)

    def maybe_finish(self, state: LeaseState) -> None:
        if state.settled or not state.finished():
            return
        state.settled = True
        try:
            self.finisher.finish(state)
        except Exception as exc:  # a bug or an item nothing can encode: the lease must still settle
            self.log.error("finish_failed", run=state.env.run, fp=state.env.fp, error=type(exc).__name__)
            self.spawn(self.failures.dead(state, "finish_error", f"{type(exc).__name__}: {exc}"[:300]))

    def callback_failed(self, state: LeaseState, exc: BaseException) -> None:
        if state.settled or self.flags.releasing:
            return
        if isinstance(exc, CloseSpider):
            # Scrapy's way for a callback to end the crawl (Scrapy reports it here twice: from the middleware's
            # process_spider_exception and its output's except; the output is exhausted after the first)
            if state.out.exhausted:
                return
            self.stats.inc_value("fleet/closespider")
            self.log.info("spider_close_requested", run=state.env.run, fp=state.env.fp, reason=str(exc.reason)[:200])
            self.stop(f"closespider:{exc.reason}"[:200])
            out = state.out
            if out.pending or out.items or out.discovered:
                self.output_done(state)  # what it yielded before is kept: the page finishes as usual
            else:
                # it yielded nothing ("Bandwidth exceeded": raise CloseSpider): the page is not done; back to
                # the queue unspent, for --resume, as in Scrapy it would be fetched again on the next crawl
                self.defer(state, time.time(), "closespider")
            return
        state.settled = True
        self.finisher.callback_failed(state, exc)

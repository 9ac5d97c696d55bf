"""Spider middleware that knows when a leased request's callback output is done.

Scrapy has no "every output of this response is done" signal. This middleware hands each item leaving
the callback to the request's ledger (``FleetPort.item_started``: the request now waits for it until the
item pipelines are done with it, see pipelines.objects), notes the end of the output, and takes the
child requests out of the engine's path into the parent's ledger, so they are enqueued in Redis in the
same call that records the parent DONE — before the parent is acknowledged.

It sits at order 1, outermost on the output path, so it sees exactly what survived every other
spider middleware (depth, offsite, URL length), and the objects it records are the very objects the
item pipelines receive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response

from scraper.queue.envelope import META_KEY
from scraper.worker.adapter import release_parse_tree
from scraper.worker.ports import FleetPort, fleet_of

if TYPE_CHECKING:
    from scraper.worker.ledger import LeaseState

__all__ = ["CommitMiddleware"]


class CommitMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CommitMiddleware:
        return cls(crawler)

    def _held(self, response: Any) -> tuple[FleetPort, LeaseState] | None:
        """(runtime, lease state) of ``response``'s request, or None when no lease of this worker holds it."""
        rt = fleet_of(self.crawler)
        if rt is None or not isinstance(response, Response) or response.request is None:
            return None
        state = rt.state_for(response.request)
        return (rt, state) if state is not None else None

    async def process_start(self, start: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Workers never run a spider's start(): seeding is ``fleet seed``'s job."""
        if fleet_of(self.crawler) is None:
            async for x in start:
                yield x
        return

    def _ledger(self, response: Response) -> tuple[FleetPort | None, LeaseState | None, bool]:
        """(runtime, lease state or None, drop): drop when the response belongs to a lease this
        worker no longer tracks (settled elsewhere): its outputs belong to whichever delivery
        commits, so dropping them here loses nothing."""
        rt = fleet_of(self.crawler)
        state = rt.state_for(response.request) if rt is not None and response.request is not None else None
        request = response.request if isinstance(response, Response) else None
        lease = request.meta.get(META_KEY) if request is not None else None
        if rt is not None and state is None and isinstance(lease, str):
            rt.log.warning("stale_response_dropped", lease=lease)
            return rt, None, True
        return rt, state, False

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        rt, state, stale = self._ledger(response)
        try:
            if stale:
                async for _ in result:
                    pass
                return
            if rt is None or state is None or state.settled:
                async for x in result:
                    yield x
                return
            try:
                async for x in result:
                    if isinstance(x, Request):
                        rt.discovered(state, x)
                        continue
                    if x is not None:  # Scrapy sends no None to the pipelines: it must not be waited for
                        rt.item_started(state, x)
                    yield x
            except Exception as exc:
                rt.callback_failed(state, exc)
                raise
        finally:
            release_parse_tree(response)
        rt.output_done(state)

    def process_spider_exception(
        self, response: Response, exception: BaseException
    ) -> None:
        held = self._held(response)
        if held is not None:
            rt, state = held
            rt.callback_failed(state, exception)

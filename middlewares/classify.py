"""Downloader middleware: the failure taxonomy (scraper.policy.taxonomy) applied to every leased request.

Why thin: the decision is a pure function (:func:`scraper.policy.taxonomy.classify_response`,
:func:`scraper.policy.taxonomy.classify_exception`), as in Scrapy's own retry middleware; this middleware only
finds the request's lease, waits for a speculative lease's confirmation, and hands the verdict to the
runtime (scraper.worker.ports.FleetPort), which settles the lease.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response

from scraper.policy.refused import Refused
from scraper.policy.taxonomy import OK, D, Rules, Verdict, classify_exception, classify_response
from scraper.worker.ports import VOID_MESSAGE, FleetPort, fleet_of

if TYPE_CHECKING:
    from scraper.worker.ledger import LeaseState

__all__ = ["ClassifyMiddleware", "spider_handles"]


async def _claimed(rt: FleetPort, claim: Awaitable[bool], request: Request) -> None:
    """Wait for Redis to confirm a speculative lease (scraper.worker.feeder.Speculation); drop the fetch if not."""
    if not await claim:
        rt.drop_void(request)
        raise IgnoreRequest(VOID_MESSAGE)


class ClassifyMiddleware:
    """Downloader middleware: hands every non-ok outcome to the runtime, which settles the lease.

    A settled request raises IgnoreRequest so the spider callback never sees a block page or an error
    page; its retry (if any) is a new delivery from Redis, not an in-process loop.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.rules = Rules.from_settings(crawler.settings)
        self.allowed_codes = frozenset(int(x) for x in crawler.settings.getlist("HTTPERROR_ALLOWED_CODES"))

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ClassifyMiddleware:
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Response | Coroutine[Any, Any, Response]:
        rt = fleet_of(self.crawler)
        if rt is None:
            return response
        if rt.drop_void(request):  # before the lookup: a later lease may reuse the id
            raise IgnoreRequest(VOID_MESSAGE)
        state = rt.state_for(request)
        if state is None:
            return response
        if state.claim is not None:  # a speculative lease Redis has not confirmed yet: wait for it
            return self._confirmed_response(rt, state, state.claim, request, response)
        return self._classify(rt, state, response, request)

    async def _confirmed_response(
        self, rt: FleetPort, state: LeaseState, claim: Awaitable[bool], request: Request, response: Response
    ) -> Response:
        await _claimed(rt, claim, request)
        return self._classify(rt, state, response, request)

    def _classify(self, rt: FleetPort, state: LeaseState, response: Response, request: Request) -> Response:
        verdict = classify_response(response, self.rules)
        if verdict.cls is D and verdict.status is not None and self._handled(request, response.status):
            # the spider takes this status (Scrapy's HttpErrorMiddleware contract): a hard status is
            # final in Scrapy too (never retried), so its callback gets the response, as under plain Scrapy
            verdict = Verdict(OK, f"http:{verdict.status}", status=verdict.status)
        rt.fetched(state, response, verdict)
        if verdict.cls is OK:  # 3xx included: redirects are followed by Scrapy
            return response
        rt.fail(state, verdict, response=response)
        raise IgnoreRequest(f"fleet: {verdict.cls} {verdict.reason}")

    def _handled(self, request: Request, status: int) -> bool:
        return spider_handles(self.crawler, request, status, self.allowed_codes)

    def process_exception(self, request: Request, exception: BaseException) -> Coroutine[Any, Any, None] | None:
        rt = fleet_of(self.crawler)
        if rt is None:
            return None
        if rt.drop_void(request):
            raise IgnoreRequest(VOID_MESSAGE)
        state = rt.state_for(request)
        if state is not None and state.claim is not None:
            return self._confirmed_exception(rt, state, state.claim, request, exception)
        self._settle_exception(rt, state, request, exception)
        return None

    async def _confirmed_exception(
        self, rt: FleetPort, state: LeaseState, claim: Awaitable[bool], request: Request, exception: BaseException
    ) -> None:
        await _claimed(rt, claim, request)
        self._settle_exception(rt, state, request, exception)

    def _settle_exception(
        self, rt: FleetPort, state: LeaseState | None, request: Request, exception: BaseException
    ) -> None:
        if state is None or (isinstance(exception, IgnoreRequest) and not isinstance(exception, Refused)):
            if state is not None and not state.settled:
                rt.ignored(state, exception)
            return
        rt.fail(state, classify_exception(exception, proxied=bool(request.meta.get("proxy"))),
                response=exception.response if isinstance(exception, Refused) else None)
        raise IgnoreRequest(f"fleet: download error {type(exception).__name__}")


def spider_handles(crawler: Crawler, request: Request, status: int, allowed_codes: frozenset[int]) -> bool:
    """Whether the spider handles a response's ``status`` itself: ``meta["handle_httpstatus_all"]``, else
    ``meta["handle_httpstatus_list"]``, else the spider's ``handle_httpstatus_list`` or HTTPERROR_ALLOWED_CODES
    (``allowed_codes``; Scrapy's order; HTTPERROR_ALLOW_ALL is Fleet's own, so not read here)."""
    meta = getattr(request, "meta", None) or {}  # a response built without its request has none
    if meta.get("handle_httpstatus_all", False):
        return True
    if "handle_httpstatus_list" in meta:
        return status in (meta["handle_httpstatus_list"] or ())
    allowed = getattr(getattr(crawler, "spider", None), "handle_httpstatus_list", None)
    return status in (allowed_codes if allowed is None else allowed)

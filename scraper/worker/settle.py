"""The catch-all: whatever drops a leased request on its way through Scrapy, the lease is settled.

Why here: ClassifyMiddleware settles what reaches it (responses, and exceptions from the download handler
and from ``process_request``). But an exception raised by a downloader middleware's ``process_response``
(Scrapy's redirect middleware at REDIRECT_MAX_TIMES, its decompression at DOWNLOAD_MAXSIZE, a decoder's
``zlib.error``, any third-party middleware) goes to no ``process_exception`` at all: Scrapy hands it to
the request's errback, or drops it silently when it is an ``IgnoreRequest``. Such requests stayed leased,
their leases heartbeated forever, and ``--until-idle`` never fired.

:class:`FleetDownloader` (the ``DOWNLOADER`` setting) wraps the whole downloader-middleware chain: every
failure that leaves it for a request whose lease is still unsettled becomes a classified outcome.

* a typed refusal (:mod:`scraper.policy.refused`): class D with its reason (``redirect:loop``,
  ``redirect:too_many``, ``body:too_large``, ``body:undecodable``) and evidence;
* a plain ``IgnoreRequest`` (a component's deliberate drop, in Scrapy's sense): finished and counted as
  ignored, as when ClassifyMiddleware sees one on the way out; a subclass of it that Fleet does not
  know: class D ``dropped:<type>`` with its message (the DLQ shows it);
* any other exception: the taxonomy's ``classify_exception`` (network errors A, proxy failures B,
  unknown errors A ``error:<type>``, whose budget ends in the DLQ).

The errback then sees ``IgnoreRequest`` (as for any request Fleet settled), never the raw error.

On the spider side, ``spider_error`` (a callback or errback raised where no spider middleware handled
it) and ``request_dropped`` (the scheduler refused a continuation) settle the lease too. What can still
hold a request without an exception (a middleware or callback that never returns) is the watchdog's
job (:mod:`scraper.worker.watchdog`), which uses :meth:`FleetDownloader.phase` and
:meth:`FleetDownloader.cancel`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from scrapy import Request, Spider, signals
from scrapy.core.downloader import Downloader, Slot
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from scraper.policy.refused import Refused
from scraper.policy.taxonomy import D, Verdict, classify_exception
from scraper.worker.adapter import process_slot_queue
from scraper.worker.ports import VOID_MESSAGE, FleetPort, fleet_of

if TYPE_CHECKING:
    from scraper.worker.ledger import LeaseState

__all__ = ["FleetDownloader", "verdict_for"]


def _ignored(message: str) -> Failure:
    """What the errback sees of a request Fleet settled (as ClassifyMiddleware raises)."""
    return Failure(IgnoreRequest(message))  # type: ignore[no-untyped-call]


def verdict_for(exc: BaseException, request: Request) -> Verdict:
    """The class of a failure that left the downloader-middleware chain unsettled."""
    if isinstance(exc, IgnoreRequest) and not isinstance(exc, Refused):
        return Verdict(D, f"dropped:{type(exc).__name__}", detail=str(exc)[:300])
    return classify_exception(exc, proxied=bool(request.meta.get("proxy")))


class FleetDownloader(Downloader):
    """Scrapy's downloader; every request it returns unsettled with a failure is settled here."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.fleet_crawler = crawler
        # the Deferred of each fetch in progress, by request: what the watchdog cancels
        self._fetches: dict[Request, Deferred[Any]] = {}
        crawler.signals.connect(self._spider_error, signal=signals.spider_error)
        crawler.signals.connect(self._request_dropped, signal=signals.request_dropped)

    def fetch(self, request: Request) -> Deferred[Response | Request]:  # type: ignore[override]
        d: Deferred[Response | Request] = super().fetch(request)
        if not d.called:
            self._fetches[request] = d
        d.addBoth(self._fetched, request)
        return d

    def _fetched(self, result: Any, request: Request) -> Any:
        self._fetches.pop(request, None)
        if not isinstance(result, Failure):
            return result
        rt = fleet_of(self.fleet_crawler)
        if rt is None:
            return result
        if rt.drop_void(request):  # a fetch nobody waits for (speculative, or settled by the watchdog)
            return result if isinstance(result.value, IgnoreRequest) else _ignored(VOID_MESSAGE)
        state = rt.state_for(request)
        if state is None or state.settled:
            return result
        if state.claim is not None:  # a speculative lease: settle nothing before Redis confirms it
            return deferred_from_coro(self._after_claim(rt, state, state.claim, request, result))
        return self._settle(rt, state, request, result)

    async def _after_claim(
        self, rt: FleetPort, state: LeaseState, claim: Awaitable[bool], request: Request, failure: Failure
    ) -> Any:
        if not await claim:
            return _ignored(VOID_MESSAGE)
        if state.settled:
            return failure
        return self._settle(rt, state, request, failure)

    def _settle(self, rt: FleetPort, state: LeaseState, request: Request, failure: Failure) -> Failure:
        exc = failure.value
        assert exc is not None
        if type(exc) is IgnoreRequest:
            # a component's deliberate drop, as Scrapy means it: the request is finished (acknowledged,
            # counted as ignored), the same outcome ClassifyMiddleware gives it on the way out
            rt.ignored(state, exc)
            return failure
        verdict = verdict_for(exc, request)
        response = exc.response if isinstance(exc, Refused) else None
        if isinstance(exc, Refused) and response is not None and not exc.classified:
            rt.fetched(state, response, verdict)  # the classifier never saw it: record the fetch here
        rt.log.info("request_unsettled_failure", run=state.env.run, fp=state.env.fp,
                    error=type(exc).__name__, cls=verdict.cls, reason=verdict.reason)
        rt.fail(state, verdict, response)
        return _ignored(f"fleet: {verdict.cls} {verdict.reason}")

    # -- per-slot concurrency -----------------------------------------------------------------------

    def _process_queue(self, slot: Slot) -> None:
        """Scrapy's slot loop, with each request counted as transferring when it leaves the slot's queue
        (:func:`scraper.worker.adapter.process_slot_queue` says why: per-domain limits did not hold)."""
        process_slot_queue(self, slot)

    # -- for the watchdog --------------------------------------------------------------------------

    def phase(self, request: Request) -> str:
        """Where ``request`` is in the downloader: ``queued`` (waiting for its slot: DOWNLOAD_DELAY, per
        slot concurrency), ``downloading`` (in the handler), ``middleware`` (in a middleware, before or
        after the handler) or ``out`` (not in the downloader)."""
        if request not in self.active:
            return "out"
        slot = self.slots.get(request.meta.get(self.DOWNLOAD_SLOT, ""))
        if slot is not None and request in slot.active:
            return "downloading" if request in slot.transferring else "queued"
        return "middleware"

    def cancel(self, request: Request) -> bool:
        """Cancel the fetch of ``request`` if it is in progress (it ends with a failure, which the engine
        handles as any other); False when there is nothing to cancel."""
        d = self._fetches.pop(request, None)
        if d is None or d.called:
            return False
        d.cancel()
        return True

    # -- the spider side ---------------------------------------------------------------------------

    def _spider_error(self, failure: Failure, response: Any, spider: Spider) -> None:
        rt = fleet_of(self.fleet_crawler)
        if rt is None or not isinstance(response, Response) or response.request is None:
            return
        state = rt.state_for(response.request)
        if state is not None and not state.settled:
            rt.callback_failed(state, cast(BaseException, failure.value))

    def _request_dropped(self, request: Request, spider: Spider) -> None:
        rt = fleet_of(self.fleet_crawler)
        state = rt.state_for(request) if rt is not None else None
        if rt is not None and state is not None and not state.settled and state.claim is None:
            rt.fail(state, Verdict(D, "dropped:scheduler"), None)

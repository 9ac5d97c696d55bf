"""Scrapy's redirect middlewares, with loops and overlong chains as typed outcomes (class D).

Why: Scrapy follows a redirect loop (``302`` to itself, or A -> B -> A) REDIRECT_MAX_TIMES times and then
raises a bare ``IgnoreRequest`` from ``process_response``, where no Fleet code saw it: the request stayed
leased (and heartbeated) forever, and ten such URLs stopped a concurrency-1 worker. Here a redirect to a
URL already visited in this chain (the ``redirect_urls`` meta plus the current URL) raises
:class:`~scraper.policy.refused.RedirectLoop` at once, without the extra round trips, and a chain that
reaches the limit raises :class:`~scraper.policy.refused.TooManyRedirects`. ``classify_exception`` makes
them D ``redirect:loop`` / ``redirect:too_many``; the evidence is the hop count and the 3xx status.

A POST answered with a 303 to its own URL is not a loop (the GET that follows is a different request),
so a URL counts as visited again only with the same method.
"""

from __future__ import annotations

from typing import Any

from scrapy import Request, Spider
from scrapy.downloadermiddlewares.redirect import MetaRefreshMiddleware, RedirectMiddleware
from scrapy.http import Response

from scraper.policy.refused import BadRedirect, RedirectLoop, Refused, TooManyRedirects

__all__ = ["FleetMetaRefreshMiddleware", "FleetRedirectMiddleware"]


class _Bounded:
    """The part both middlewares share: ``_redirect`` is where Scrapy decides to follow or give up."""

    max_redirect_times: int

    def _redirect(self, redirected: Request, request: Request, reason: Any) -> Request:
        chain: list[str] = [*request.meta.get("redirect_urls", ()), request.url]
        hops = len(chain) - 1
        if redirected.method == request.method and redirected.url in chain:
            back = chain.index(redirected.url)
            raise RedirectLoop(f"hops={hops + 1} back_to_hop={back} reason={reason}")
        ttl = request.meta.get("redirect_ttl", self.max_redirect_times)
        if not ttl or request.meta.get("redirect_times", 0) + 1 > self.max_redirect_times:
            raise TooManyRedirects(f"hops={hops + 1} limit={self.max_redirect_times} reason={reason}")
        followed: Request = super()._redirect(redirected, request, reason)  # type: ignore[misc]
        return followed

    def _with_response(self, exc: Refused, response: Response) -> Refused:
        exc.response = response  # status and Location for the DLQ entry
        return exc

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        try:
            result: Request | Response = super().process_response(request, response)  # type: ignore[misc]
        except Refused as exc:
            raise self._with_response(exc, response) from None
        except ValueError as exc:  # a Location such as "http://[::1/": no retry can mend it
            raise self._with_response(BadRedirect(f"{type(exc).__name__}: {str(exc)[:120]}"), response) from None
        return result


class FleetRedirectMiddleware(_Bounded, RedirectMiddleware):
    """Scrapy's RedirectMiddleware (3xx + Location) with _Bounded's loop and limit outcomes."""


class FleetMetaRefreshMiddleware(_Bounded, MetaRefreshMiddleware):
    """Scrapy's MetaRefreshMiddleware (<meta http-equiv=refresh>) with _Bounded's outcomes."""

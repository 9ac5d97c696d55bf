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

A 3xx that neither middleware followed and the spider does not handle is refused by
:class:`UnfollowedRedirectMiddleware` (below both, so a 302 without a ``Location`` whose body holds a meta
refresh is still followed): without a ``Location`` it is D ``redirect:bad_location``, to a scheme other than
http(s) (``file:``, ``ftp:``, ``data:``) D ``policy:scheme``, any other (``dont_redirect``, redirects off)
D ``http:<status>``. Plain Scrapy drops such a response in ``HttpErrorMiddleware`` (Fleet sets
HTTPERROR_ALLOW_ALL so that its classifier decides); Fleet's worker took it for the page and stored an item
of nothing, past the drift check (which judges 2xx pages only).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit
from weakref import WeakKeyDictionary

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.redirect import MetaRefreshMiddleware, RedirectMiddleware
from scrapy.http import HtmlResponse, Response
from scrapy.utils.response import get_base_url

try:  # Scrapy's per-response cache of get_base_url (private: without it, a bad <base href> is Scrapy's ValueError)
    from scrapy.utils.response import _baseurl_cache as _BASE_URLS
except ImportError:  # pragma: no cover
    _BASE_URLS = WeakKeyDictionary()

from middlewares.classify import spider_handles
from scraper.policy.refused import (
    BadRedirect,
    RedirectLoop,
    RedirectScheme,
    Refused,
    TooManyRedirects,
    UnhandledRedirect,
)

REDIRECTS = frozenset({301, 302, 303, 307, 308})  # the statuses Scrapy's RedirectMiddleware follows

__all__ = ["REDIRECTS", "FleetMetaRefreshMiddleware", "FleetRedirectMiddleware", "UnfollowedRedirectMiddleware",
           "to_follow"]


def to_follow(response: Response) -> bool:
    """A redirect the redirect middleware will follow (one of REDIRECTS, with a Location): its body is never
    read, so the middlewares below it (decoding, the tag count) let it through untouched."""
    return response.status in REDIRECTS and b"Location" in response.headers


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
    """Scrapy's MetaRefreshMiddleware (<meta http-equiv=refresh>) with _Bounded's outcomes. A page whose
    ``<base href>`` no URL can be made of (``http://[::1/``, a port of 99999) has the page's own URL as its base,
    as the HTML standard and browsers have it: Scrapy resolves every page's base URL here and again in the
    callback's first ``response.css`` (its Selector), and the ValueError made a 200 page D
    ``redirect:bad_location`` with its items lost (a hostile probe's finding)."""

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        if isinstance(response, HtmlResponse):
            try:
                get_base_url(response)
            except ValueError:
                _BASE_URLS[response] = response.url  # Scrapy's per-response cache of get_base_url
        return super().process_response(request, response, spider)


class UnfollowedRedirectMiddleware:
    """A 3xx that reached it was followed by neither redirect middleware; unless the spider handles its status
    (``handle_httpstatus_list``/``_all``, HTTPERROR_ALLOWED_CODES: the classifier's rule, Scrapy's
    HttpErrorMiddleware's) it is refused, never the page (module docstring): a redirect Scrapy would follow but
    for its ``Location`` is D ``redirect:bad_location`` (none) or ``policy:scheme`` (``file:``, ``ftp:``...);
    any other (``dont_redirect``, REDIRECT_ENABLED=False, 300/304/305) D ``http:<status>``, as Scrapy drops it.
    Runs below FleetMetaRefreshMiddleware (settings: 570): a meta refresh in the body is followed first."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.follows = crawler.settings.getbool("REDIRECT_ENABLED", True)
        self.allowed_codes = frozenset(int(x) for x in crawler.settings.getlist("HTTPERROR_ALLOWED_CODES"))

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> UnfollowedRedirectMiddleware:
        return cls(crawler)

    def process_response(self, request: Request, response: Response, spider: Spider | None = None) -> Response:
        status = response.status
        if not 300 <= status < 400 or spider_handles(self.crawler, request, status, self.allowed_codes):
            return response
        location = response.headers.get("Location")
        if status in REDIRECTS and self.follows and not request.meta.get("dont_redirect", False):
            if not location:
                raise BadRedirect(f"status={status} without a Location", response)
            try:
                scheme = urlsplit(urljoin(request.url, location.decode("latin-1"))).scheme.lower()
            except ValueError:
                raise BadRedirect(f"status={status} to a Location no URL can be made of", response) from None
            if scheme not in ("http", "https"):
                raise RedirectScheme(f"status={status} to a {scheme[:20]!r} URL (not followed)", response)
        raise UnhandledRedirect(status, f"status={status} not followed (the spider does not handle it)", response)

"""Redirect targets and Scrapy's dupefilter (issue #19 follow-up).

Plain Scrapy hands a redirected request back to its scheduler, whose dupefilter drops it when its URL
was scheduled before (and records it when not): a page linking both to ``/landed/redirect`` and to
``/redirect/2`` (two hops to ``/landed/redirect``) gives one item, and once a redirect landed on a page,
a later link to that page (or to a hop of the chain) is not followed. A ``dont_filter`` request's
redirects are neither checked nor recorded. Under Fleet the same holds (scraper.worker.redirects).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import scrapy
from scrapy import Request
from scrapy.http import Response

from tests.parity.corpus import BASE

__all__ = ["RedirectDedup"]


class RedirectDedup(scrapy.Spider):
    name = "parity_redirect_dedup"
    start_urls = [f"{BASE}/docs/p1"]

    def parse(self, response: Response) -> Iterable[Any]:
        # the target linked directly and through a chain: one item (the chain is dropped at its target)
        yield response.follow("/landed/redirect", callback=self.parse_landed)
        yield response.follow("/redirect/2", callback=self.parse_landed)
        # a hop of a chain linked directly: the chain is dropped at that hop
        yield response.follow("/redirect/1?to=mid", callback=self.parse_landed)
        yield response.follow("/redirect/2?to=mid", callback=self.parse_landed)
        # a chain whose landed page and its child link back to the landed page and to a hop
        yield response.follow("/redirect/2?to=second", callback=self.parse_second)
        # dont_filter: its redirect is neither checked nor recorded, so the plain link is fetched too
        yield Request(f"{BASE}/redirect/1?to=df", callback=self.parse_landed, dont_filter=True)
        yield response.follow("/landed/df", callback=self.parse_landed, cb_kwargs={"plain": True})

    def parse_landed(self, response: Response, plain: bool = False) -> Iterable[dict[str, Any]]:
        yield {"landed": response.url, "redirects": len(response.meta.get("redirect_urls", [])), "plain": plain}

    def parse_second(self, response: Response) -> Iterable[Any]:
        yield {"second": response.url, "redirects": len(response.meta.get("redirect_urls", []))}
        yield response.follow("/landed/second", callback=self.parse_landed)  # itself: dropped
        yield response.follow("/item/7-7", callback=self.parse_back)

    def parse_back(self, response: Response) -> Iterable[Any]:
        yield {"back": response.url}
        yield response.follow("/landed/second", callback=self.parse_landed)  # the landed page: dropped
        yield response.follow("/redirect/1?to=second", callback=self.parse_landed)  # a hop: dropped

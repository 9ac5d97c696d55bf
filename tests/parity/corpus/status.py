"""Statuses, errbacks, redirects, meta refresh and dont_filter requests.

The errbacks get a hard status the spider does not handle, a 503 every time (retries spent) and a
connection refused (a closed port, retries spent): under plain Scrapy each reaches ``on_error`` once,
after Scrapy's retries; under Fleet each goes to the DLQ (README, "Differences from plain Scrapy").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import scrapy
from scrapy import Request
from scrapy.http import Response
from twisted.python.failure import Failure

from tests.parity.corpus import BASE, CLOSED

__all__ = ["Statuses"]


class Statuses(scrapy.Spider):
    name = "parity_status"
    handle_httpstatus_list = [404]  # the class attribute: a 404 without meta reaches the callback

    async def start(self) -> AsyncIterator[Request]:
        yield Request(f"{BASE}/redirect/3", callback=self.parse_landed)
        yield Request(f"{BASE}/refresh", callback=self.parse_landed)
        yield Request(f"{BASE}/status/404", callback=self.parse_status)
        yield Request(f"{BASE}/status/418", callback=self.parse_status, meta={"handle_httpstatus_list": [418]})
        yield Request(f"{BASE}/status/410", callback=self.parse_status, meta={"handle_httpstatus_all": True})
        yield Request(f"{BASE}/status/410?e=1", callback=self.parse_status, errback=self.on_error)
        yield Request(f"{BASE}/status/503?e=1", callback=self.parse_status, errback=self.on_error)
        yield Request(f"{CLOSED}/down?e=1", callback=self.parse_status, errback=self.on_error)

    def parse_landed(self, response: Response) -> Iterable[Any]:
        yield {"landed": response.url, "redirects": len(response.meta.get("redirect_urls", []))}
        for n in (1, 2):  # the same URL twice, dont_filter: plain Scrapy fetches and parses it twice
            yield Request(f"{BASE}/item/9-9", callback=self.parse_again, dont_filter=True,
                          cb_kwargs={"n": n, "via": response.url})

    def parse_again(self, response: Response, n: int, via: str) -> Iterable[dict[str, Any]]:
        yield {"again": response.url, "n": n, "via": via}

    def parse_status(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"status": response.status, "url": response.url}

    def on_error(self, failure: Failure) -> Iterable[dict[str, Any]]:
        name = failure.type.__name__ if failure.type else ""
        self.logger.warning("parity_errback %s %s", name, failure.request.url)  # type: ignore[attr-defined]
        yield {"errback": name, "url": failure.request.url}  # type: ignore[attr-defined]

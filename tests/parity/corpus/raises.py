"""A callback that raises after it yielded an item and requests.

Plain Scrapy keeps what the callback yielded before the exception (the item is exported, the requests
are followed) and logs the error. Documented difference (README, "Differences from plain Scrapy"): Fleet
settles a request as one unit, so none of it is kept; the request goes to the DLQ as
``callback_error:ValueError`` with the exception as evidence, and ``fleet run`` exits 4.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import scrapy
from scrapy.http import Response

from tests.parity.corpus import BASE

__all__ = ["Raises"]


class Raises(scrapy.Spider):
    name = "parity_raises"
    start_urls = [f"{BASE}/list?page=1"]

    def parse(self, response: Response) -> Iterable[Any]:
        yield {"list": response.url}
        yield from response.follow_all(css="a.item", callback=self.parse_item)
        raise ValueError("odd list page")

    def parse_item(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"item": response.url}

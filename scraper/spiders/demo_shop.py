"""Spider for the bundled demo catalogue (``scraper.devtools.demo_site``).

Why: it is the fleet's reference spider — ``fleet demo``/``fleet smoke`` and the integration
tests crawl it, and its declared ``required_fields``/``item_callbacks`` drive drift detection
when the site switches to the v2 template.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy.http import Response

__all__ = ["DEFAULT_START_URL", "DemoShopSpider", "parse_price"]

DEFAULT_START_URL = "http://127.0.0.1:8000/catalogue/page-1.html"
_PRICE_RE = re.compile(r"\d[\d,]*(?:\.\d+)?")


def parse_price(text: str | None) -> float | None:
    """``"£1,234.56"`` -> ``1234.56``; None when there is no number (drift, not a crash)."""
    if not text:
        return None
    match = _PRICE_RE.search(text)
    if match is None:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:
        return None


def _clean(text: str | None) -> str | None:
    """Collapse whitespace; empty strings become None so required-field checks see them missing."""
    if text is None:
        return None
    cleaned = " ".join(text.split())
    return cleaned or None


class DemoShopSpider(scrapy.Spider):
    """List pages fan out to product pages; only ``parse_product`` yields items."""

    name = "demo_shop"
    version = "1"
    required_fields: tuple[str, ...] = ("name", "price", "sku")
    item_callbacks: tuple[str, ...] = ("parse_product",)

    def start_url(self) -> str:
        """Read ``FLEET_DEMO_URL`` at call time so tests/CLI can point at a fresh port."""
        return os.environ.get("FLEET_DEMO_URL") or DEFAULT_START_URL

    async def start(self) -> AsyncIterator[Any]:
        """Seed the crawl with the first list page (Scrapy >= 2.13 start API)."""
        yield scrapy.Request(self.start_url(), callback=self.parse)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[scrapy.Request]:
        """List page: follow every product link and the next page; yields no items."""
        for href in response.css("article.product a::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)
        next_href = response.css("li.next a::attr(href)").get()
        if next_href:
            yield response.follow(next_href, callback=self.parse)

    def parse_product(self, response: Response, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Product page: one item; missing markup gives None fields instead of an exception."""
        description = _clean(" ".join(response.css("div.description ::text").getall()))
        yield {
            "name": _clean(response.css("h1.name::text").get()),
            "price": parse_price(response.css("p.price::text").get()),
            "sku": _clean(response.css("span.sku::text").get()),
            "url": response.url,
            "description": description,
        }

"""The spider ``fleet smoke`` drives: one item per page, deterministic from the page itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.http import Response

__all__ = ["FleetSmokeSpider"]


class FleetSmokeSpider(scrapy.Spider):
    name = "fleet_smoke"
    version = "1"
    required_fields = ("token", "title")
    item_callbacks = ("parse",)
    custom_settings: dict[str, Any] = {}

    def parse(self, response: Response, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield {
            "token": response.css("h1.token::text").get(),
            "title": response.css("title::text").get(),
            "stamp": response.css("p.stamp::text").get(),
        }

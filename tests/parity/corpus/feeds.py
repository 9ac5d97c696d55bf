"""XMLFeedSpider and CSVFeedSpider, stock."""

from __future__ import annotations

from typing import Any

from scrapy.http import Response
from scrapy.selector import Selector
from scrapy.spiders import CSVFeedSpider, XMLFeedSpider

from tests.parity.corpus import BASE

__all__ = ["CsvFeed", "XmlFeed"]


class XmlFeed(XMLFeedSpider):
    name = "parity_xmlfeed"
    start_urls = [f"{BASE}/feed.xml"]
    iterator = "iternodes"
    itertag = "item"

    def parse_node(self, response: Response, selector: Selector) -> dict[str, Any]:
        return {"title": selector.xpath("title/text()").get(), "link": selector.xpath("link/text()").get(),
                "cat": selector.xpath("cat/text()").get()}


class CsvFeed(CSVFeedSpider):
    name = "parity_csvfeed"
    start_urls = [f"{BASE}/feed.csv"]
    delimiter = ";"
    headers = ["id", "name", "price"]

    def parse_row(self, response: Response, row: dict[str, str]) -> dict[str, Any] | None:
        if row["id"] == "id":
            return None  # the header line
        return {"id": int(row["id"]), "name": row["name"], "price": float(row["price"])}

"""One spider over many request and item features: start(), FormRequest and JsonRequest bodies, cb_kwargs,
priorities, async callbacks, response.follow_all, DEPTH_LIMIT, ItemLoader into dict / Item / dataclass /
attrs items, an item pipeline that raises DropItem and a spider middleware (both via custom_settings)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import scrapy
from itemloaders.processors import TakeFirst
from scrapy import Request
from scrapy.exceptions import DropItem
from scrapy.http import FormRequest, JsonRequest, Response
from scrapy.loader import ItemLoader

from tests.parity.corpus import BASE

__all__ = ["DropThirds", "Features", "MarkDicts"]


class ProductItem(scrapy.Item):
    kind = scrapy.Field()
    name = scrapy.Field()
    price = scrapy.Field()
    section = scrapy.Field()


@dataclasses.dataclass
class ProductData:
    kind: str | None = None
    name: str | None = None
    price: str | None = None
    section: str | None = None


@attrs.define
class ProductAttrs:
    kind: str | None = None
    name: str | None = None
    price: str | None = None
    section: str | None = None


class Loader(ItemLoader):
    default_output_processor = TakeFirst()


class DropThirds:
    """Item pipeline: drops the third item of each list page."""

    def process_item(self, item: Any) -> Any:
        name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
        if isinstance(item, scrapy.Item):
            name = item.get("name")
        if name and str(name).endswith("-3"):
            raise DropItem(f"third item {name}")
        return item


class MarkDicts:
    """Spider middleware: marks every dict item on its way out of a callback."""

    async def process_spider_output(self, response: Response, result: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in result:
            if isinstance(x, dict):
                x["via_middleware"] = True
            yield x


class Features(scrapy.Spider):
    name = "parity_features"
    custom_settings = {
        "DEPTH_LIMIT": 2,
        "ITEM_PIPELINES": {"tests.parity.corpus.features.DropThirds": 300},
        "SPIDER_MIDDLEWARES": {"tests.parity.corpus.features.MarkDicts": 543},
    }

    async def start(self) -> AsyncIterator[Request]:
        yield Request(f"{BASE}/list?page=1", callback=self.parse_list, cb_kwargs={"section": "shop"}, priority=5)
        yield FormRequest(f"{BASE}/api/echo", formdata={"a": "1", "b": "x y"}, callback=self.parse_echo,
                          cb_kwargs={"what": "form"})
        yield JsonRequest(f"{BASE}/api/echo", data={"k": [1, 2], "s": "t"}, callback=self.parse_echo,
                          cb_kwargs={"what": "json"}, priority=-1)

    def parse_echo(self, response: Response, what: str) -> Iterable[dict[str, Any]]:
        got = json.loads(response.text)
        yield {"what": what, "method": got["method"], "ctype": got["ctype"].split(";")[0], "body": got["body"]}

    def parse_list(self, response: Response, section: str) -> Iterable[Any]:
        yield {"kind": "list", "url": response.url, "depth": response.meta["depth"]}
        yield from response.follow_all(css="a.item", callback=self.parse_item, cb_kwargs={"section": section})
        nxt = response.css("a.next::attr(href)").get()
        if nxt:
            yield response.follow(nxt, callback=self.parse_list, cb_kwargs={"section": section}, priority=1)

    async def parse_item(self, response: Response, section: str) -> AsyncIterator[Any]:
        name = response.url.rsplit("/", 1)[-1]
        kinds = [dict, ProductItem, ProductData, ProductAttrs]
        page, _, idx = name.partition("-")
        cls = kinds[(2 * int(page) + int(idx)) % len(kinds)]  # each of the four over pages 1 and 2
        loader = Loader(item=cls(), response=response)
        loader.add_value("kind", cls.__name__)
        loader.add_value("name", name)
        loader.add_css("price", ".price::text")
        loader.add_value("section", section)
        yield loader.load_item()

"""scrapy-redis spiders exactly as their users write them, for tests/integration/test_scrapy_redis.py.

Nothing here knows about Fleet: the same classes run under plain ``scrapy crawl`` with scrapy-redis's
scheduler (the custom_settings below are the usual scrapy-redis ones, which Fleet replaces).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scrapy.http import Response
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import Rule
from scrapy_redis.spiders import RedisCrawlSpider, RedisSpider

__all__ = ["DocsFromRedis", "ProductsCrawl", "ProductsFromRedis"]

_SCRAPY_REDIS = {
    "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
    "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
    "SCHEDULER_PERSIST": True,
}


def product(response: Response) -> dict[str, Any]:
    return {
        "sku": response.css("span.sku::text").get("").strip(),
        "name": response.css("h1.name::text").get("").strip(),
        "src": response.meta.get("src", "url"),
    }


class ProductsFromRedis(RedisSpider):
    """Fed product URLs (plain, or JSON data with meta) by ``LPUSH sredis_products:start_urls``."""

    name = "sredis_products"
    custom_settings = dict(_SCRAPY_REDIS)

    def parse(self, response: Response) -> Iterator[dict[str, Any]]:
        yield product(response)


class ProductsCrawl(RedisCrawlSpider):
    """Fed catalogue pages by ``SADD sredis_crawl:seeds`` (a set, REDIS_START_URLS_AS_SET)."""

    name = "sredis_crawl"
    redis_key = "%(name)s:seeds"
    custom_settings = {**_SCRAPY_REDIS, "REDIS_START_URLS_AS_SET": True}
    rules = (Rule(LinkExtractor(allow=r"/product/\d+\.html"), callback="parse_product"),)

    def parse_product(self, response: Response) -> Iterator[dict[str, Any]]:
        yield product(response)


class DocsFromRedis(RedisCrawlSpider):
    """Fed the docs index (``LPUSH sredis_docs:start_urls <base>/docs/``) of tests/parity/site.py, whose
    every page links back to it: the rule's callback matches the start URL too (issue #19). Plain
    scrapy-redis parses ``/docs/`` twice, by parse_start_url and by the rule (its start requests are
    dont_filter and never recorded by the dupefilter)."""

    name = "sredis_docs"
    allowed_domains = ["127.0.0.1"]
    custom_settings = dict(_SCRAPY_REDIS)
    rules = (Rule(LinkExtractor(allow=r"/docs/(p\d+)?$"), callback="parse_page", follow=True),)

    def parse_start_url(self, response: Response, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield {"kind": "start", "url": response.url}

    def parse_page(self, response: Response) -> Iterator[dict[str, Any]]:
        yield {"kind": "page", "url": response.url}

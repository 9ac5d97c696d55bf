"""CrawlSpider and SitemapSpider, stock: rules with follow, process_links, process_request (tagging some
links, dropping others by returning None) and a rule callback that also matches the start URL (issue #19:
the start page's item went missing under Fleet)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scrapy import Request
from scrapy.http import Response
from scrapy.link import Link
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule, SitemapSpider

from tests.parity.corpus import BASE

__all__ = ["DocsCrawl", "DocsSitemap"]


class DocsCrawl(CrawlSpider):
    name = "parity_docs_crawl"
    allowed_domains = ["127.0.0.1"]
    start_urls = [f"{BASE}/docs/"]
    rules = (
        Rule(LinkExtractor(allow=r"/docs/"), callback="parse_page", follow=True,
             process_links="drop_skips", process_request="tag_request"),
    )

    def drop_skips(self, links: list[Link]) -> list[Link]:
        return [link for link in links if "/skip/" not in link.url]

    def tag_request(self, request: Request, response: Response) -> Request | None:
        if request.url.endswith(("/docs/p11", "/docs/p12")):
            return None  # issue #19: a Rule's process_request returning None: the link is not followed
        request.meta["found_on"] = response.url
        return request

    def parse_start_url(self, response: Response, **kwargs: Any) -> Iterable[dict[str, Any]]:
        yield {"kind": "start", "url": response.url}

    def parse_page(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"kind": "page", "url": response.url, "title": response.css("h1::text").get(),
               "words": response.css(".words::text").get()}


class DocsSitemap(SitemapSpider):
    name = "parity_sitemap"
    sitemap_urls = [f"{BASE}/robots.txt"]
    sitemap_rules = [(r"/blog/", "parse_blog"), (r"/docs/", "parse_doc")]  # /about matches neither

    def parse_blog(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"kind": "blog", "url": response.url, "author": response.css(".author::text").get()}

    def parse_doc(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"kind": "doc", "url": response.url, "title": response.css("h1::text").get()}

"""Downloader middleware: refuse a page whose markup would take more memory to parse than a worker can spare.

Why: DOWNLOAD_MAXSIZE bounds a body's bytes, not the tree a callback builds from them. lxml (through parsel's
``response.css``/``xpath``) costs ~130-180 bytes of a worker's memory per tag, so a hostile 24 MB page of 3
million tiny elements took a worker to 1 GB, and one of 32 MiB of ``<a>`` would take it to ~1.8 GB. Counting
the body's ``<`` characters (bytes.count: ~0.4 ms a MB) is an upper bound on its tags (every tag opens with
one; a ``<`` in text or a script only over-counts), so a page over ``FLEET_MAX_PAGE_TAGS`` raises
:class:`~scraper.policy.refused.TooManyTags` before any callback parses it: class D ``body:too_many_tags``,
the count and the limit as evidence. The memory a parsed page can take is then about 180 B x the limit
(1,000,000 by default: ~180 MB). A spider that crawls bigger documents raises it in its custom_settings;
0 switches the check off.

It sits at 955, between ``DecompressMiddleware`` (960: the count is of the decoded body) and the classifier
(950), and reads text responses a callback builds an HTML selector from (HTML, plain text, JSON: a spider's
``response.css`` works on any of them). Not XML: a big product feed or sitemap is what ``XMLFeedSpider``'s
``iternodes`` reads in bounded memory, and it was crawled before this check existed. The count is of bytes
0x3C (``<`` in ASCII-compatible charsets and in UTF-16/32), of the decoded text in a charset where ``<`` is
another byte (EBCDIC): a hostile page cannot hide its tags behind its charset. A redirect that is followed
is never parsed and is let through, as the decoder lets it through.
"""

from __future__ import annotations

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.http import Response, TextResponse, XmlResponse

from middlewares.redirect import to_follow
from scraper.policy.refused import TooManyTags

__all__ = ["TagLimitMiddleware"]



def _ascii_lt(encoding: str) -> bool:
    """Whether ``<`` is the byte 0x3C in ``encoding`` (ASCII-compatible charsets, UTF-8, UTF-16/32 too: each
    ``<`` still holds that byte). Not so in EBCDIC (cp500, cp037: 0x4C), where the page is counted as text."""
    try:
        return b"<" in "<".encode(encoding)
    except (LookupError, UnicodeError):
        return False


class TagLimitMiddleware:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TagLimitMiddleware:
        limit = crawler.settings.getint("FLEET_MAX_PAGE_TAGS")
        if limit <= 0:
            raise NotConfigured("FLEET_MAX_PAGE_TAGS <= 0: no limit")
        return cls(limit)

    def process_response(self, request: Request, response: Response) -> Response:
        if not isinstance(response, TextResponse) or isinstance(response, XmlResponse):
            return response
        if to_follow(response):
            return response
        body = response.body
        if len(body) <= self.limit:  # fewer bytes than the limit: fewer tags too (the usual page: no count)
            return response
        tags = body.count(b"<") if _ascii_lt(response.encoding) else response.text.count("<")
        if tags > self.limit:
            raise TooManyTags(f"tags={tags} bytes={len(body)} limit={self.limit}", response, classified=False)
        return response

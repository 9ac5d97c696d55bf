"""Downloader middleware: fetch only URLs of the schemes FLEET_SCHEMES allows (http and https by default).

Why here as well as where URLs enter (``fleet seed``, ``runtime.discovered``): whatever reaches the
downloader is checked, be it a queue entry someone else wrote, a request rebuilt from an old envelope,
or a redirect. A refused URL raises :class:`scraper.urls.URLRefused`; the classifier makes it class D
with its reason (``policy:scheme`` or ``policy:bad_url``), so it goes to the DLQ once, unfetched, and
never burns retries on something no retry can fix. Always on, whatever FLEET_ALLOW_PRIVATE says; Scrapy's
own handlers for the other schemes are switched off in the settings too (``DOWNLOAD_HANDLERS``).
"""

from __future__ import annotations

from scrapy import Request
from scrapy.crawler import Crawler

from scraper.config import FleetConfig
from scraper.urls import refusal

__all__ = ["SchemeMiddleware"]


class SchemeMiddleware:
    def __init__(self, schemes: tuple[str, ...]) -> None:
        self.schemes = schemes

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SchemeMiddleware:
        return cls(FleetConfig.from_env().schemes)

    def process_request(self, request: Request) -> None:
        problem = refusal(request.url, self.schemes)
        if problem is not None:
            raise problem

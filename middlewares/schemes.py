"""Downloader middleware: fetch only URLs of the schemes FLEET_SCHEMES allows (http and https by default).

Why here as well as where URLs enter (``fleet seed``, ``runtime.discovered``): whatever reaches the
downloader is checked, be it a queue entry someone else wrote, a request rebuilt from an old envelope,
or a redirect. A refused URL raises :class:`scraper.policy.urls.URLRefused`; the classifier makes it class D
with its reason (``policy:scheme`` or ``policy:bad_url``), so it goes to the DLQ once, unfetched, and
never burns retries on something no retry can fix. Always on, whatever FLEET_ALLOW_PRIVATE says; Scrapy's
own handlers for the other schemes are switched off in the settings too (``DOWNLOAD_HANDLERS``).
"""

from __future__ import annotations

from scrapy import Request
from scrapy.crawler import Crawler

from scraper.infra.config import FleetConfig
from scraper.policy.urls import refusal

__all__ = ["SchemeMiddleware"]

#: Per-request meta that may only tighten the spider's limits: a queue entry is input, and 0 means
#: "no limit" to Scrapy's handler and decoder (a 1e12 timeout would also blind the watchdog).
_LIMITS = (("download_timeout", "DOWNLOAD_TIMEOUT"), ("download_maxsize", "DOWNLOAD_MAXSIZE"),
           ("download_warnsize", "DOWNLOAD_WARNSIZE"))


class SchemeMiddleware:
    def __init__(self, schemes: tuple[str, ...], limits: dict[str, float] | None = None) -> None:
        self.schemes = schemes
        self.limits = limits or {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SchemeMiddleware:
        limits: dict[str, float] = {
            meta: (crawler.settings.getfloat(setting) if meta == "download_timeout"
                   else crawler.settings.getint(setting))
            for meta, setting in _LIMITS}
        return cls(FleetConfig.from_env().schemes, {k: v for k, v in limits.items() if v > 0})

    def process_request(self, request: Request) -> None:
        problem = refusal(request.url, self.schemes)
        if problem is not None:
            raise problem
        meta = request.meta
        for key, cap in self.limits.items():
            value = meta.get(key)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= cap):
                meta[key] = cap  # a request may ask for less than the spider's limit, never more

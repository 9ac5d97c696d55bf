"""The one module that touches Scrapy internals on the worker's behalf.

Why one place: Scrapy's engine slot (``engine._slot``: its ``nextcall``, ``scheduler.direct`` and
``inprogress``) and the offsite middleware's host regex are not public API; a Scrapy upgrade that moves
them breaks this file, and only this file.
"""

from __future__ import annotations

from typing import Any

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.offsite import OffsiteMiddleware

__all__ = ["Offsite", "engine_holds", "kick_engine"]


def kick_engine(crawler: Crawler) -> None:
    """Schedule the engine's next turn now (new work is buffered, or a settled request freed a slot),
    instead of at its next 5 s heartbeat."""
    engine = crawler.engine
    slot: Any = getattr(engine, "_slot", None) if engine is not None else None
    if slot is not None and slot.nextcall is not None:
        slot.nextcall.schedule()


def engine_holds(engine: Any, request: Request) -> str:
    """Where the engine holds a request the downloader no longer has: ``scheduled`` (a redirect waiting
    in the scheduler for the engine to take it), ``scraping`` (the engine has its response: callback,
    items, pipelines) or ``limbo`` (nowhere Scrapy tracks it: nothing will move it on)."""
    slot = getattr(engine, "_slot", None)
    if request in getattr(getattr(slot, "scheduler", None), "direct", ()):
        return "scheduled"
    if request in getattr(slot, "inprogress", ()):
        return "scraping"
    return "limbo"


class Offsite:
    """The spider's allowed_domains, checked where a request is found (Scrapy's own check never sees a
    queued request again: it is fetched with ``dont_filter``)."""

    def __init__(self, crawler: Crawler, spider: Spider) -> None:
        self.spider = spider
        self.mw = OffsiteMiddleware(crawler.stats)
        self.mw.crawler = crawler
        self.mw.host_regex = self.mw.get_host_regex(spider)

    def refuses(self, request: Request) -> bool:
        return not self.mw.should_follow(request, self.spider)

    @staticmethod
    def for_spider(crawler: Crawler, spider: Spider) -> Offsite | None:
        return Offsite(crawler, spider) if getattr(spider, "allowed_domains", None) else None

"""The one module that touches Scrapy internals on the worker's behalf.

Why one place: Scrapy's engine slot (``engine._slot``: its ``nextcall``, ``scheduler.direct`` and
``inprogress``), the downloader's slots (``_get_slot``, a slot's ``delay`` and ``jitter``, its queue
loop), the offsite middleware's host regex and a response's cached Selector (``_cached_selector``) are
not public API; a Scrapy upgrade that moves them breaks this file, and only this file (FleetDownloader
in scraper.worker.settle is a Downloader subclass: its overrides call in here; middlewares.commit calls
``release_parse_tree``).
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.offsite import OffsiteMiddleware
from scrapy.http import Response
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro

__all__ = ["Offsite", "engine_holds", "kick_engine", "process_slot_queue", "release_parse_tree", "space_slot",
           "unspace_slot"]


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


def space_slot(crawler: Crawler, request: Request, delay: float) -> bool:
    """Make the download slot ``request`` goes to wait at least ``delay`` seconds between two requests
    (a robots.txt Crawl-delay, middlewares.robots); True if the slot changed.

    Why here: the delay is a per-slot attribute Scrapy sets from DOWNLOAD_DELAY / DOWNLOAD_SLOTS when it
    creates the slot; ``_get_slot`` creates it now if needed (the request is enqueued right after). A
    Crawl-delay is a minimum, so the slot's jitter (RANDOMIZE_DOWNLOAD_DELAY: 0.5-1.5x) is switched off
    when it could go below it; a larger DOWNLOAD_DELAY is kept. Scrapy drops a slot idle for 60 s; the
    middleware applies the delay again on every request, so the new slot gets it too."""
    engine = crawler.engine
    downloader: Any = getattr(engine, "downloader", None) if engine is not None else None
    if downloader is None or delay <= 0:
        return False
    _key, slot = downloader._get_slot(request)
    if slot.delay * (1 - slot.jitter) >= delay:
        return False
    slot.delay = max(slot.delay, delay)
    slot.jitter = 0.0
    return True


def unspace_slot(crawler: Crawler, request: Request) -> None:
    """Make the download slot ``request`` goes to add no delay of its own (DOWNLOAD_DELAY, a Crawl-delay):
    the politeness gate (scraper.worker.gate) spaces the domain for the whole fleet, and a second, local
    spacing on top would make the server see the sum. Applied on every gated dispatch, so a slot Scrapy
    re-creates (it drops one idle for 60 s) is reset too."""
    engine = crawler.engine
    downloader: Any = getattr(engine, "downloader", None) if engine is not None else None
    if downloader is None:
        return
    _key, slot = downloader._get_slot(request)
    slot.delay = 0.0
    slot.jitter = 0.0


def process_slot_queue(downloader: Any, slot: Any) -> None:
    """Scrapy's ``Downloader._process_queue``, with each request counted as transferring when it is taken
    off the slot's queue (FleetDownloader's ``_process_queue`` is this).

    Why: Scrapy 2.19 starts each download as a scheduled coroutine that adds the request to
    ``slot.transferring`` only when it runs, so one pass of its loop takes every queued request of the slot
    while ``free_transfer_slots()`` still reads the full concurrency: a spider asking for
    ``CONCURRENT_REQUESTS_PER_DOMAIN = 1`` had 5 requests in flight to its site, under plain Scrapy too
    (measured with a server counting connections; tests/integration/test_politeness.py). Adding the request
    here makes the limit hold; ``_download`` adds it again (a set) and removes it when done."""
    if slot.latercall:
        return
    now = monotonic()
    delay = slot.download_delay()
    if delay:
        penalty = delay - now + slot.lastseen
        if penalty > 0:
            slot.latercall = call_later(penalty, downloader._latercall, slot)
            return
    while slot.queue and slot.free_transfer_slots() > 0:
        slot.lastseen = now
        request, queue_dfd = slot.queue.popleft()
        slot.transferring.add(request)
        _schedule_coro(downloader._wait_for_download(slot, request, queue_dfd))
        if delay:  # prevent a burst when inter-request delays are configured
            downloader._process_queue(slot)
            break


def release_parse_tree(response: Response) -> None:
    """Drop the response's cached Selector once the callback's output is exhausted.

    Why: the Selector refers back to its response, so every page (body, headers, lxml tree: ~30
    container objects) is cyclic garbage that only the collector frees, after surviving into older
    generations; measured on the bench site, that made the collector ~9 % of a worker's CPU. Without
    the cycle, the page is freed by reference counting when the engine lets go of it. Anything that
    still asks for ``response.selector`` (a pipeline, a signal handler) gets a fresh one: the property
    rebuilds it on demand. The spider middleware (middlewares.commit) calls it; the cache attribute is
    Scrapy's private name, hence here."""
    if getattr(response, "_cached_selector", None) is not None:
        response._cached_selector = None  # type: ignore[attr-defined]


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

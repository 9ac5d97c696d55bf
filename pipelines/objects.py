"""The object write as an item pipeline, and the object keys and encoding for item pipelines.

:class:`ObjectPipeline` is in the default ``ITEM_PIPELINES`` at order 1000
(``scraper.worker.catalog.OBJECT_PIPELINE_ORDER``), last: a spider's own pipelines go below it and see
every item first, and what they return is what the request's object holds. It hands the item to the
request's ledger (``FleetPort.item_passed``); the runtime writes the request's one object, under its
deterministic key, once the callback's output is done and every item of it has left the pipelines
(scraper.worker.finisher, scraper.worker.sinks), and acknowledges the request only once it is durable.
Why not write here: one object per request, not per item, and the write must be durable before the
ack. An item a user pipeline drops (``DropItem``) is left out of the object; one a pipeline raises on
makes the request class D ``pipeline_error`` (the ``item_dropped`` / ``item_error`` signals, handled
here too).

Which request an item belongs to: Scrapy tells no pipeline. ``CommitMiddleware`` records the object the
callback yielded with its lease state (``FleetPort.item_started``, by identity: items are not touched);
:class:`FleetItemProcessor` (``ITEM_PROCESSOR``) keeps that object in a context variable while the
pipelines run, so the pipeline finds it even when a user pipeline returned another object (a dict made
from an Item). The drop and error signals carry that object themselves.

Why the key builders are re-exported here: they are shared by the runtime, ``fleet replay`` and
``fleet smoke``, so they live in scraper (which never imports pipelines/); a pipeline imports them from
here or from scraper.store.objects alike.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, cast

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.pipelines import ItemPipelineManager
from twisted.python.failure import Failure

from scraper.store.objects import (
    JSON_SCALARS,
    ObjectWriter,
    WriteContext,
    encode_items,
    evidence_key,
    idempotency_key,
    item_to_dict,
    items_key,
    raw_key,
)
from scraper.worker.ports import fleet_of

__all__ = [
    "JSON_SCALARS",
    "FleetItemProcessor",
    "ObjectPipeline",
    "ObjectWriter",
    "WriteContext",
    "encode_items",
    "evidence_key",
    "idempotency_key",
    "item_to_dict",
    "items_key",
    "raw_key",
]

# the object the callback yielded, while the item pipelines run on it (one asyncio task per item)
_YIELDED: ContextVar[Any] = ContextVar("fleet_yielded_item")


class FleetItemProcessor(ItemPipelineManager):
    """Scrapy's item pipeline manager, keeping the callback's own object at hand for ObjectPipeline.

    Why a context variable: the pipelines of one item run in one task, one after the other, and a user
    pipeline may return a new object; the ledger knows items by the object the callback yielded."""

    async def process_item_async(self, item: Any) -> Any:
        token = _YIELDED.set(item)
        try:
            return await super().process_item_async(item)
        finally:
            _YIELDED.reset(token)


class ObjectPipeline:
    """Hands each item, as the pipelines before it left it, to its request's object (see the module)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ObjectPipeline:
        pipeline = cls(crawler)
        crawler.signals.connect(pipeline._dropped, signal=signals.item_dropped)
        crawler.signals.connect(pipeline._error, signal=signals.item_error)
        return pipeline

    def process_item(self, item: Any) -> Any:
        rt = fleet_of(self.crawler)
        if rt is not None:
            if item is None:  # a pipeline before ours forgot ``return item``: nothing to store, as if dropped
                rt.item_dropped(_YIELDED.get(None))
            elif type(item) is not dict and not ItemAdapter.is_item(item):
                # 42, a string, a list: no object can hold it. Scrapy passes it on and its exporters log an
                # error for it alone; here too it is left out and the page's real items are written (it
                # failed every write: a class A retry of the page, four fetches, then the DLQ)
                rt.item_dropped(_YIELDED.get(item))
                if self.crawler.stats is not None:
                    self.crawler.stats.inc_value("fleet/items/not_an_item")
                rt.log.error("item_not_an_item", type=type(item).__name__)
                return None
            else:
                rt.item_passed(_YIELDED.get(item), item)
        return item

    def _dropped(self, item: Any, response: Any, exception: BaseException, spider: Any) -> None:
        rt = fleet_of(self.crawler)
        if rt is not None:
            rt.item_dropped(item)

    def _error(self, item: Any, response: Any, spider: Any, failure: Failure) -> None:
        rt = fleet_of(self.crawler)
        if rt is not None:
            rt.item_failed(item, cast(BaseException, failure.value))

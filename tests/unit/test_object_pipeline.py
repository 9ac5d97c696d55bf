"""ObjectPipeline's settings (always present, always last) and how items find their request.

The crawl itself (user pipelines that modify, drop or raise) is tests/integration/test_item_pipelines.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
import scrapy
from scrapy.exceptions import DropItem
from scrapy.utils.test import get_crawler
from twisted.python.failure import Failure

from pipelines.objects import FleetItemProcessor, ObjectPipeline
from scraper.queue.client import Lease
from scraper.queue.envelope import Envelope
from scraper.worker.catalog import (
    OBJECT_PIPELINE,
    OBJECT_PIPELINE_ORDER,
    SettingsError,
    base_settings,
    item_pipelines,
    worker_settings,
)
from scraper.worker.ledger import LeaseState, Ledger


def _spider(pipelines: dict[Any, Any] | None = None, **custom: Any) -> type[scrapy.Spider]:
    settings = dict(custom)
    if pipelines is not None:
        settings["ITEM_PIPELINES"] = pipelines
    return type("S", (scrapy.Spider,), {"name": "s", "custom_settings": settings})


class Mine:
    def process_item(self, item: Any) -> Any:
        return item


# -- settings ------------------------------------------------------------------------------------


def test_the_default_settings_list_it_last_and_a_spider_s_own_pipelines_keep_it() -> None:
    base = base_settings()
    assert base.getdict("ITEM_PIPELINES") == {OBJECT_PIPELINE: OBJECT_PIPELINE_ORDER}
    s = worker_settings(_spider({"my.Pipe": 300, Mine: 500}), base)
    assert s.getdict("ITEM_PIPELINES") == {OBJECT_PIPELINE: 1000, "my.Pipe": 300, Mine: 500}
    assert s["ITEM_PROCESSOR"] == "pipelines.objects.FleetItemProcessor"
    assert worker_settings(_spider(), base).getdict("ITEM_PIPELINES") == {OBJECT_PIPELINE: 1000}


def test_switching_it_off_is_refused_by_path_or_by_class() -> None:
    for key in (OBJECT_PIPELINE, ObjectPipeline):
        with pytest.raises(SettingsError, match="to None, so no item would ever be stored"):
            item_pipelines(_spider({key: None, "my.Pipe": 300}), {OBJECT_PIPELINE: 1000})


def test_a_pipeline_of_the_spider_at_or_after_it_moves_ours_after_it() -> None:
    """A spider that does not mention ObjectPipeline runs unchanged: ours goes one past its last pipeline."""
    for order in (1000, 1100):
        assert item_pipelines(_spider({"my.Late": order}), {OBJECT_PIPELINE: 1000}) == {
            OBJECT_PIPELINE: order + 1, "my.Late": order}
    moved = item_pipelines(_spider({"my.Late": 1100, ObjectPipeline: 2000}), {OBJECT_PIPELINE: 1000})
    assert moved == {OBJECT_PIPELINE: 2000, "my.Late": 1100}
    assert item_pipelines(_spider({"my.Off": None}), {OBJECT_PIPELINE: 1000}) == {OBJECT_PIPELINE: 1000,
                                                                                 "my.Off": None}


def test_placing_ours_before_a_pipeline_of_the_spider_is_refused() -> None:
    with pytest.raises(SettingsError, match=f"my.Late \\(1100\\) after {OBJECT_PIPELINE} \\(1050\\)"):
        item_pipelines(_spider({"my.Late": 1100, ObjectPipeline: 1050}), {OBJECT_PIPELINE: 1000})


def test_another_item_processor_is_refused() -> None:
    with pytest.raises(SettingsError, match="ITEM_PROCESSOR"):
        item_pipelines(_spider(ITEM_PROCESSOR="scrapy.pipelines.ItemPipelineManager"), {})
    item_pipelines(_spider(ITEM_PROCESSOR=FleetItemProcessor), {})


# -- items and their requests ----------------------------------------------------------------------


def _state(n: int) -> LeaseState:
    return LeaseState(Lease(f"id{n}", b"", 1, "tok"), Envelope(url=f"http://shop.test/{n}", spider="s", run="r",
                                                               fp=f"f{n}"))


class _Runtime:
    """The spider side of FleetPort, as FleetRuntime implements it, over a real Ledger."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.finished: list[LeaseState] = []

    def item_started(self, state: LeaseState, item: Any) -> None:
        self.ledger.item_out(state, item)

    def item_passed(self, yielded: Any, item: Any) -> None:
        state = self.ledger.item_back(yielded)
        if state is not None:
            state.out.items.append(item)
            self._check(state)

    def item_dropped(self, yielded: Any) -> None:
        state = self.ledger.item_back(yielded)
        if state is not None:
            self._check(state)

    def item_failed(self, yielded: Any, exc: BaseException) -> None:
        state = self.ledger.item_back(yielded)
        if state is not None:
            state.out.errors.append(repr(exc))
            self._check(state)

    def _check(self, state: LeaseState) -> None:
        if state.finished():
            self.finished.append(state)


@dataclasses.dataclass
class Book:
    title: str


class Replace:
    """A user pipeline that returns another object (a dict made from the item)."""

    def process_item(self, item: Any) -> Any:
        return {"title": str(getattr(item, "title", None) or item["title"]).upper()}


def _processor(rt: _Runtime, *pipelines: type) -> tuple[FleetItemProcessor, ObjectPipeline]:
    crawler = get_crawler(scrapy.Spider, settings_dict={"ITEM_PIPELINES": {}})
    crawler.fleet = rt  # type: ignore[attr-defined]
    ours = ObjectPipeline.from_crawler(crawler)
    return FleetItemProcessor(*[p() for p in pipelines], ours, crawler=crawler), ours


def test_an_item_a_user_pipeline_replaced_still_reaches_its_own_request() -> None:
    rt = _Runtime()
    proc, _ = _processor(rt, Replace)
    one, two = _state(1), _state(2)
    a, b = Book("a"), Book("b")
    shared = {"title": "x"}  # the same object yielded by both requests: one item each
    for state, item in ((one, a), (two, b), (one, shared), (two, shared)):
        rt.item_started(state, item)
    one.out.exhausted = two.out.exhausted = True

    async def go() -> None:
        # an item no request of this worker yielded passes through (its pipelines still ran)
        assert await proc.process_item_async(Book("z")) == {"title": "Z"}
        assert rt.finished == [] and one.out.pending == two.out.pending == 2
        for item in (b, shared, a, shared):
            await proc.process_item_async(item)

    asyncio.run(go())
    assert one.out.items == [{"title": "X"}, {"title": "A"}] and two.out.items == [{"title": "B"}, {"title": "X"}]
    assert rt.finished == [one, two] and rt.ledger.flowing == {}


def test_dropped_and_failed_items_settle_their_request_by_the_signals() -> None:
    rt = _Runtime()
    _, ours = _processor(rt)
    state = _state(1)
    a, b, c = {"title": "a"}, {"title": "b"}, {"title": "c"}
    for item in (a, b, c):
        rt.item_started(state, item)
    state.out.exhausted = True
    ours._dropped(b, None, DropItem("b"), None)
    ours._error(c, None, None, Failure(ValueError("boom")))
    assert not state.finished()
    ours.process_item(a)  # outside FleetItemProcessor: the item is the object yielded
    assert state.out.items == [a] and state.out.errors == ["ValueError('boom')"] and rt.finished == [state]
    assert rt.ledger.flowing == {}


def test_outside_a_fleet_worker_it_stands_aside() -> None:
    pipeline = ObjectPipeline(SimpleNamespace())  # type: ignore[arg-type]
    item = {"title": "a"}
    assert pipeline.process_item(item) is item
    pipeline._dropped(item, None, DropItem("x"), None)


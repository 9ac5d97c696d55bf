"""CommitMiddleware's own memory hygiene (its ledger logic is covered end to end in integration)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from scrapy.http import HtmlResponse, Request

from middlewares.commit import CommitMiddleware


class _Runtime:
    def __init__(self) -> None:
        self.done = 0

    def state_for(self, request: Request) -> Any:
        return SimpleNamespace(settled=False)

    def item_started(self, state: Any, item: Any) -> None:
        pass

    def discovered(self, state: Any, request: Request) -> None:
        pass

    def output_done(self, state: Any) -> None:
        self.done += 1

    def callback_failed(self, state: Any, exc: BaseException) -> None:
        pass


async def _callback(response: HtmlResponse) -> AsyncIterator[dict[str, Any]]:
    yield {"title": response.css("h1::text").get()}


def test_a_parsed_page_is_freed_by_reference_counting_once_its_output_is_done() -> None:
    """The cached Selector refers back to its response: without dropping it, every page (and its lxml
    tree) waited for the cyclic collector."""

    async def go() -> None:
        rt = _Runtime()
        mw = CommitMiddleware(SimpleNamespace(fleet=rt))  # type: ignore[arg-type]
        req = Request("http://shop.test/p/1")
        resp = HtmlResponse(req.url, body=b"<html><h1>hi</h1></html>", request=req)
        out = [x async for x in mw.process_spider_output(resp, _callback(resp))]
        assert out == [{"title": "hi"}] and rt.done == 1
        assert resp.css("h1::text").get() == "hi"  # still usable afterwards: rebuilt on demand
        out = [x async for x in mw.process_spider_output(resp, _callback(resp))]
        ref = weakref.ref(resp)
        gc.disable()
        try:
            del resp
            assert ref() is None, "the response is only reachable through a reference cycle"
        finally:
            gc.enable()

    asyncio.run(go())


def test_a_none_the_callback_yields_is_not_waited_for() -> None:
    """Scrapy sends no None to the item pipelines: counted, the request would never finish."""

    async def go() -> None:
        started: list[Any] = []
        rt = _Runtime()
        rt.item_started = lambda state, item: started.append(item)  # type: ignore[method-assign]
        mw = CommitMiddleware(SimpleNamespace(fleet=rt))  # type: ignore[arg-type]
        req = Request("http://shop.test/p/1")
        resp = HtmlResponse(req.url, body=b"<html></html>", request=req)

        async def callback() -> AsyncIterator[Any]:
            yield None
            yield {"a": 1}

        assert [x async for x in mw.process_spider_output(resp, callback())] == [None, {"a": 1}]
        assert started == [{"a": 1}] and rt.done == 1

    asyncio.run(go())

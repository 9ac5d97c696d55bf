"""Worker settings of a rendering spider (scraper.worker.render.apply): a browser navigation is bounded by
the spider's DOWNLOAD_TIMEOUT, as a plain fetch is, unless the spider sets Playwright's own timeout."""

from __future__ import annotations

import sys
from typing import Any

import scrapy
from scrapy.settings import Settings

from scraper.worker import render


def _settings(custom: dict[str, Any], **project: Any) -> Settings:
    spidercls = type("Js", (scrapy.Spider,), {"name": "js", "render_js": True, "custom_settings": custom})
    s = Settings({"DOWNLOAD_TIMEOUT": 30, "CONCURRENT_REQUESTS": 16, "FLEET_CHROMIUM": sys.executable, **project})
    render.apply(spidercls, s)
    s.setdict(custom, priority="spider")  # what Scrapy does with custom_settings next
    return s


def test_navigation_is_bounded_by_download_timeout() -> None:
    assert _settings({}).getfloat("PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT") == 30_000
    assert _settings({"DOWNLOAD_TIMEOUT": 4}).getfloat("PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT") == 4_000


def test_the_spiders_or_projects_own_navigation_timeout_wins() -> None:
    own = {"DOWNLOAD_TIMEOUT": 4, "PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT": 60_000}
    assert _settings(own).getfloat("PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT") == 60_000
    project = _settings({}, PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT=45_000)
    assert project.getfloat("PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT") == 45_000


def test_a_request_uses_only_the_contexts_the_spider_declares(monkeypatch: Any) -> None:
    """A queued request is input: a context name of its own would be a new browser context per entry, and a
    proxy's context is the proxy middleware's choice."""
    import asyncio
    from types import SimpleNamespace

    from scrapy import Request
    from scrapy_playwright.handler import ScrapyPlaywrightDownloadHandler

    seen: list[object] = []

    async def fetched(self: Any, request: Request) -> Any:
        seen.append(request.meta.get("playwright_context"))
        return None

    monkeypatch.setattr(ScrapyPlaywrightDownloadHandler, "download_request", fetched)
    handler = render.FleetPlaywrightDownloadHandler.__new__(render.FleetPlaywrightDownloadHandler)
    handler.render_all = True
    handler.config = SimpleNamespace(startup_context_kwargs={"mine": {}})
    for ctx, proxy in (("mine", None), ("default", None), ("evil-1", None), (["x"], None),
                       (render.PROXY_CONTEXT + "p2", "p1"), (None, "p1")):
        meta: dict[str, Any] = {"fleet_proxy_id": proxy} if proxy else {}
        if ctx is not None:
            meta["playwright_context"] = ctx
        asyncio.run(handler.download_request(Request("https://a.example/", meta=meta)))
    assert seen == ["mine", "default", "default", "default", render.PROXY_CONTEXT + "p1", render.PROXY_CONTEXT + "p1"]

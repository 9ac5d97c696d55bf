"""Variant (e): crawlee-python's ParselCrawler doing demo_shop's crawl with crawlee's defaults.

Defaults kept: its HTTP client (impit), file-system storage (request queue + dataset under
CRAWLEE_STORAGE_DIR, set by the runner to a temp dir), session pool, retries, autoscaled pool.
Only the concurrency is pinned to the bench's (desired = max = BENCH_CONCURRENCY) so every
contender runs 32 requests at once. Same selectors and item fields as demo_shop.

Writes ``{"fetch_ts": [...], "items": n}`` to BENCH_PROBE_OUT: one timestamp per page when its
handler starts (the response has been fetched).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from crawlee import ConcurrencySettings
from crawlee.crawlers import ParselCrawler, ParselCrawlingContext

from scraper.spiders.demo_shop import _clean, parse_price


async def main() -> None:
    n = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    ts: list[float] = []
    items = 0
    crawler = ParselCrawler(
        concurrency_settings=ConcurrencySettings(desired_concurrency=n, max_concurrency=n),
        configure_logging=False,
    )

    @crawler.router.default_handler
    async def list_page(ctx: ParselCrawlingContext) -> None:
        ts.append(time.time())
        await ctx.enqueue_links(selector="article.product a", label="PRODUCT")
        await ctx.enqueue_links(selector="li.next a")

    @crawler.router.handler("PRODUCT")
    async def product(ctx: ParselCrawlingContext) -> None:
        nonlocal items
        ts.append(time.time())
        sel = ctx.selector
        item: dict[str, Any] = {
            "name": _clean(sel.css("h1.name::text").get()),
            "price": parse_price(sel.css("p.price::text").get()),
            "sku": _clean(sel.css("span.sku::text").get()),
            "url": ctx.request.url,
            "description": _clean(" ".join(sel.css("div.description ::text").getall())),
        }
        await ctx.push_data(item)
        items += 1

    await crawler.run([os.environ["BENCH_START_URL"]])
    with open(os.environ["BENCH_PROBE_OUT"], "w") as fh:
        json.dump({"fetch_ts": ts, "items": items}, fh)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())

"""``fleet demo``: the main job on embedded defaults, end to end, on one machine.

It starts the bundled demo shop on 127.0.0.1, seeds the ``demo_shop`` spider with it, runs one worker
until the queue has been empty for two seconds, and prints where the data is. Nothing outside the
machine is touched; Redis is the embedded one unless FLEET_REDIS_URL says otherwise (never a Redis a Scrapy
project's settings name: the demo deletes its queue's keys first).

It uses the same steps as the commands (scraper.cli.common, scraper.cli.seeding, scraper.cli.worker),
never the CLI module itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from scraper.cli.common import default_run, err, load_config, redis_url_for, run_summary, spider_class
from scraper.cli.seeding import seed_run
from scraper.cli.worker import run_worker
from scraper.devtools.demo_site import DemoSite
from scraper.infra import progress
from scraper.store.backends import open_store

__all__ = ["run_demo"]


def _count_objects(store_uri: str, spider: str, run: str) -> dict[str, int]:
    store = open_store(store_uri)
    objects = items = raw = 0
    for key in store.list(f"items/spider={spider}/run={run}/"):
        objects += 1
        items += sum(1 for line in store.get(key).splitlines() if line.strip())
    for _ in store.list(f"raw/spider={spider}/run={run}/"):
        raw += 1
    return {"objects": objects, "items": items, "raw": raw}


async def _purge(redis_url: str) -> None:
    from scraper.queue import redisio
    from scraper.queue.shards import open_queue

    client = redisio.client(redis_url)
    try:
        await (await open_queue(client, "demo_shop")).purge()
    finally:
        await client.aclose()


def _scraped(crawlers: list[Any]) -> int | None:
    """Items the in-process crawler scraped so far (Redis counts pages, not items)."""
    if not crawlers or crawlers[0].stats is None:
        return None
    return int(crawlers[0].stats.get_value("item_scraped_count", 0))


def _readable_summary(result: dict[str, Any], ok: bool) -> None:
    """A few lines for the person at the terminal, after the JSON (which stays as scripts expect it)."""
    from rich.markup import escape

    run = result["run"]
    mark = "[bold green]done[/]" if ok else "[bold red]incomplete[/]"
    dlq = f"[bold red]{result['dlq']} in the DLQ[/]" if result["dlq"] else "none in the DLQ"
    err.print(
        f"\n[bold]fleet demo {mark}[/] in {result['elapsed_s']:.1f} s: {result['pages']:,} pages, "
        f"{result['items']:,} items in {result['objects']:,} objects, {dlq}\n"
        f"  [dim]data[/]    {escape(str(result['data']))}\n"
        f"  [dim]export[/]  fleet export demo_shop --run {run} --format jsonl\n"
        f"  [dim]status[/]  fleet status demo_shop",
        highlight=False,
    )


def run_demo(*, products: int = 200, concurrency: int = 16) -> int:
    # the demo prints a summary; per-request JSON events stay available with FLEET_LOG_LEVEL=INFO
    os.environ.setdefault("FLEET_LOG_LEVEL", "WARNING")
    cfg = load_config()
    source = "FLEET_REDIS_URL" if cfg.redis_url else "embedded"
    # FLEET_REDIS_URL or the embedded server, for every step below (redis_url_for would otherwise follow a
    # scrapy-redis project's REDIS_URL, and the demo deletes its queue's keys first)
    os.environ["FLEET_REDIS_URL"] = redis_url_for(cfg, project=False)
    cfg = load_config()
    started = time.time()
    with DemoSite(n_products=products).start() as site:
        os.environ["FLEET_DEMO_URL"] = site.start_url
        run = "demo-" + default_run()
        spidercls = spider_class("demo_shop", cfg)
        # the demo owns the demo_shop queue: work left by an interrupted demo points at a dead port
        asyncio.run(_purge(redis_url_for(cfg, spidercls)))
        seeded = asyncio.run(seed_run(cfg, spidercls, run, [], None))
        err.print(f"[bold]fleet demo[/]: shop at {site.base_url}, run {run}", highlight=False)
        show = progress.enabled(cfg.log_format)
        crawlers: list[Any] = []
        with progress.RunProgress(redis_url_for(cfg, spidercls), "demo_shop", run, show=show,
                                  items=lambda: _scraped(crawlers)):
            code = run_worker("demo_shop", concurrency, 2.0, on_crawler=crawlers.append)
        summary = asyncio.run(run_summary(cfg, "demo_shop", run, spidercls=spidercls))
    counts = _count_objects(cfg.store, "demo_shop", run)
    store = open_store(cfg.store)
    result: dict[str, Any] = {
        "spider": "demo_shop",
        "run": run,
        "seeded": seeded["enqueued"],
        "pages": summary["run"]["done"],
        "items": counts["items"],
        "objects": counts["objects"],
        "raw_snapshots": counts["raw"],
        "dlq": summary["dlq_run"],
        "elapsed_s": round(time.time() - started, 2),
        "data": store.describe(f"items/spider=demo_shop/run={run}"),
        "redis": source,
    }
    print(json.dumps(result, indent=2))
    sys.stdout.flush()  # the JSON first, then the words about it: both may share one terminal
    ok = code == 0 and counts["objects"] == products and summary["dlq_run"] == 0
    if show:
        _readable_summary(result, ok)
    if not ok:
        err.print("[bold red]demo incomplete[/]: see the summary above", highlight=False)
        return 1
    return 0

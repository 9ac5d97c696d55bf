"""fleet runs: a spider's runs as their manifests say (complete or not, counts, items, coverage).

Why from the store and not from Redis: the manifest (scraper.store.manifest) is what analysts read next
to the data, and it outlives the Redis state (SEEN/DONE expire after FLEET_DEDUP_TTL); listing needs
only FLEET_STORE. ``--refresh`` first rewrites the manifest of every run Redis still knows, from Redis
(for runs driven by plain ``fleet worker`` processes rather than ``fleet run``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from scraper.cli.args import spider_arg
from scraper.cli.common import EXIT_INFRA, connect, err, fail, load_config, out, redis_url_for
from scraper.cli.manifests import RunManifest
from scraper.infra.config import FleetConfig
from scraper.queue.shards import open_queue
from scraper.queue.storebind import run_stores
from scraper.store.backends import StoreError, open_store, store_identity
from scraper.store.manifest import list_manifests
from scraper.worker.catalog import SettingsError, SpiderNotFound, base_settings, load_spider
from scraper.worker.identity import ItemKeyError, item_key_of

__all__ = ["app"]

app = typer.Typer()


def _refresh(cfg: FleetConfig, spider: str) -> list[str]:
    """Rewrite the manifests of the runs Redis knows; returns those it could not write."""
    url = redis_url_for(cfg)

    store = store_identity(cfg.store)

    async def known() -> list[str]:
        """The runs to refresh: those Redis knows whose data is in this process's store (a manifest goes next to
        its run's data, never into another store: scraper.queue.storebind)."""
        client = await connect(url)
        try:
            runs = sorted(await (await open_queue(client, spider)).runs())
            where = await run_stores(client, spider, runs)
        finally:
            await client.aclose()
        elsewhere = {run: w for run, w in where.items() if w is not None and w != store}
        for run in runs:
            if run in elsewhere:
                err.print(f"[yellow]warning:[/] run {run!r} keeps its data in store {elsewhere[run]}: its manifest "
                          "is refreshed by a process with that FLEET_STORE", highlight=False, soft_wrap=True)
        return [r for r in runs if r not in elsewhere]

    spidercls: type | None
    try:
        spidercls = load_spider(spider, base_settings(cfg))
        item_key_of(spidercls)
    except (SpiderNotFound, ItemKeyError, SettingsError):
        spidercls = None  # a spider since removed: its version and key are kept from the last manifest
    runs = asyncio.run(known())
    failed = []
    for run in runs:
        if RunManifest(cfg, url, spider, run, spidercls, writer="fleet runs --refresh").write(final=True) is None:
            failed.append(run)
    return failed


def _row(m: dict[str, Any]) -> list[str]:
    c = m.get("counts") or {}
    rec = m.get("reconciliation") or {}

    def s(v: Any) -> str:
        return "-" if v is None else str(v)

    return [s(m.get("run")), "yes" if m.get("complete") else "no", s(m.get("started_at")), s(m.get("finished_at")),
            s(c.get("seen")), s(c.get("done")), s(c.get("dlq")), s(c.get("parked")), s(m.get("items")),
            s(m.get("objects")), "yes" if rec.get("ok") else "no"]


@app.command()
def runs(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    as_json: Annotated[bool, typer.Option("--json", help="The manifests as a JSON list.")] = False,
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="First rewrite the manifests of the runs Redis still knows, from Redis.")] = False,
) -> None:
    """List SPIDER's runs from their manifests (runs/spider=SPIDER/run=RUN/manifest.json in FLEET_STORE):
    complete or not, started/finished, seen/done/DLQ/parked, items and objects, whether the counts
    reconcile. Oldest first. Exit 3 when the store cannot be read."""
    cfg = load_config()
    if refresh:
        for run in _refresh(cfg, spider):
            err.print(f"[yellow]warning:[/] the manifest of run {run!r} was not refreshed", highlight=False)
    try:
        store = open_store(cfg.store)
        found = list(list_manifests(store, spider))
    except (StoreError, ValueError) as exc:
        raise fail(f"cannot read the run manifests: {exc}", EXIT_INFRA) from None
    manifests = []
    for key, m in found:
        if m is None:
            err.print(f"[yellow]warning:[/] {key} is not a readable manifest; skipped", highlight=False)
        else:
            manifests.append(m)
    manifests.sort(key=lambda m: (str(m.get("started_at") or ""), str(m.get("run"))))
    if as_json:
        print(json.dumps(manifests))
        return
    if not manifests:
        out.print(f"no run manifests for {spider!r} in {store.describe()} (fleet run writes them; "
                  f"fleet runs {spider} --refresh writes them from Redis)")
        return
    table = Table(title=f"runs of {spider}")
    cols = ("run", "complete", "started", "finished", "seen", "done", "dlq", "parked", "items", "objects",
            "reconciles")
    for col in cols:
        table.add_column(col, justify="left" if col in ("run", "complete", "started", "finished") else "right")
    for m in manifests:
        table.add_row(*_row(m))
    out.print(table)

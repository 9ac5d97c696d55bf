"""fleet dlq, breakers and replay: what on-call runs when an alert fires (docs/architecture.md, "Drift")."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Optional, cast

import typer
from rich.table import Table

from scraper.cli.args import SPIDER_ARG_HELP, emitted, run_arg, spider_arg, spider_kwargs
from scraper.cli.common import (
    EXIT_ARGS,
    connect,
    fail,
    load_config,
    out,
    redis_url_for,
    spider_class,
)
from scraper.infra import log
from scraper.infra.config import FleetConfig
from scraper.infra.redact import redact_data
from scraper.queue.client import known_spiders
from scraper.queue.envelope import Envelope, EnvelopeError
from scraper.queue.keys import Keys
from scraper.queue.shards import open_queue
from scraper.store.objects import json_default

__all__ = ["app"]

app = typer.Typer()
breakers_app = typer.Typer(
    help="Drift breakers per (spider, domain): list them, or reset one after a fix.",
    invoke_without_command=True,
)



@app.command("dlq")
def dlq_cmd(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    action: Annotated[str, typer.Argument(help="list (default) or requeue.")] = "list",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (list).")] = False,
    limit: Annotated[int, typer.Option(help="Newest entries to show (list).")] = 100,
    reason: Annotated[Optional[str], typer.Option(help="requeue: only entries whose reason starts with this.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="requeue: every entry.")] = False,
    run: Annotated[Optional[str], typer.Option(
        "--run", callback=run_arg, help="requeue: only entries of this run (with --reason or --all).")] = None,
) -> None:
    """Dead-lettered requests of SPIDER: `list` them (newest first) or `requeue` them with fresh budgets.

    requeue leaves the entries of a cancelled run (fleet cancel) in the DLQ: LEASE would drop them unfetched."""
    if action == "list":
        dlq_list(spider, as_json, limit)
    elif action == "requeue":
        dlq_requeue(spider, reason, all_, run)
    else:
        raise fail(f"unknown dlq action {action!r}: use list or requeue")


def dlq_list(spider: str, as_json: bool, limit: int) -> None:
    cfg = load_config()

    async def go() -> list[dict[str, Any]]:
        client = await connect(redis_url_for(cfg))
        try:
            q = await open_queue(client, spider)
            rows = []
            async for sid, f in q.dlq_iter():
                f.pop("envelope", None)
                rows.append({"id": sid, **cast(dict[str, Any], redact_data(f))})
                if len(rows) >= limit:
                    break
            return rows
        finally:
            await client.aclose()

    rows = asyncio.run(go())
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"DLQ of {spider}")
    for col in ("id", "reason", "status", "url", "attempts", "at"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r.get("reason", ""), r.get("status", ""), log.redact(r.get("url", "")),
                      r.get("attempts", ""), r.get("at", ""))
    out.print(table)


def dlq_requeue(spider: str, reason: str | None, all_: bool, run: str | None = None) -> None:
    """Put dead-lettered requests back in READY with fresh budgets (history is kept). ``run``: only its entries.
    An entry of a cancelled run stays in the DLQ (``cancelled_kept``): requeued, LEASE dropped it unfetched and
    the DLQ entry, the only copy of its envelope and evidence, was gone (probe)."""
    if not reason and not all_:
        raise fail("say which entries: --reason REASON or --all")
    cfg = load_config()

    async def go() -> dict[str, int]:
        client = await connect(redis_url_for(cfg))
        try:
            q = await open_queue(client, spider)
            skipped = kept = 0
            ids: list[str] = []
            envs: list[Envelope] = []
            cancelled: dict[str, bool] = {}
            async for sid, f in q.dlq_iter():
                if reason and not f.get("reason", "").startswith(reason):
                    continue
                try:
                    env = Envelope.loads(f.get("envelope", ""))
                except EnvelopeError:
                    skipped += 1
                    continue
                if run is not None and env.run != run:
                    continue
                if env.run not in cancelled:
                    cancelled[env.run] = bool(await client.hexists(Keys(spider).cancelled, env.run))
                if cancelled[env.run]:
                    kept += 1
                    continue
                env.history.append({"requeued_from": f.get("reason"), "at": time.time()})
                env.attempts, env.lost = {}, 0
                env.dont_filter = True  # SEEN already holds it; requeue must bypass
                envs.append(env)
                ids.append(sid)
            requeued = await q.requeue(envs)
            await q.dlq_delete(ids)
            return {"requeued": requeued, "skipped": skipped, "cancelled_kept": kept}
        finally:
            await client.aclose()

    print(json.dumps(asyncio.run(go())))




async def _breakers(cfg: FleetConfig, spider: str | None) -> dict[str, dict[str, Any]]:
    client = await connect(redis_url_for(cfg))
    try:
        names = [spider] if spider else await known_spiders(client)
        return {n: await (await open_queue(client, n)).breakers() for n in names}
    finally:
        await client.aclose()


@breakers_app.callback()
def breakers_main(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List drift breakers (default), or `reset SPIDER DOMAIN`."""
    if ctx.invoked_subcommand is not None:
        return
    _breakers_list(None, as_json)


@breakers_app.command("list")
def breakers_list(
    spider: Annotated[Optional[str], typer.Argument(callback=spider_arg, help="Only this spider.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Breakers with state, C counts, opened_at, parked backlog and sample evidence."""
    _breakers_list(spider, as_json)


def _breakers_list(spider: str | None, as_json: bool) -> None:
    cfg = load_config()
    data = asyncio.run(_breakers(cfg, spider))
    rows: list[dict[str, Any]] = [{"spider": sp, "domain": d, **cast(dict[str, Any], redact_data(info))}
                                  for sp, doms in data.items() for d, info in doms.items()]
    if emitted(rows, as_json, "no breakers yet (they appear when a spider that declares required_fields drifts)"):
        return
    table = Table(title="drift breakers")
    for col in ("spider", "domain", "state", "C/window", "trips", "opened_at", "parked", "sample"):
        table.add_column(col)
    for r in rows:
        opened = (datetime.fromtimestamp(r["opened_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                  if r["opened_at"] else "")
        sample = r["samples"][-1] if r["samples"] else {}
        table.add_row(r["spider"], r["domain"], r["state"], f"{r['c_events']}/{r['window']}", str(r["trips"]),
                      opened, str(r["parked"]), str(sample.get("evidence_key") or ""))
    out.print(table)


def _breaker_domain(domain: str, known: Any) -> str:
    """The domain as breakers record it (a request URL's host: lowercase, IDNA-encoded, as Scrapy sends it),
    with or without a trailing dot, whichever the spider has a breaker for."""
    from urllib.parse import urlsplit

    from w3lib.url import safe_url_string

    try:
        host = urlsplit(safe_url_string(f"http://{domain.strip()}/")).hostname or domain.lower()
    except ValueError:
        host = domain.lower()
    return next((d for d in (host, host.rstrip("."), host + ".") if d in known), host)


@breakers_app.command("reset")
def breakers_reset(
    spider: Annotated[str, typer.Argument(callback=spider_arg)],
    domain: Annotated[str, typer.Argument(help="Target host, e.g. shop.example.com")],
) -> None:
    """Close a breaker and release its parked requests to READY (after the spider was fixed)."""
    cfg = load_config()

    async def go() -> tuple[str, int]:
        client = await connect(redis_url_for(cfg))
        try:
            q = await open_queue(client, spider)
            known = await q.breakers()
            host = _breaker_domain(domain, known)
            if host not in known:  # a typo must not write a breaker record for a domain never crawled
                listed = ", ".join(sorted(known)[:10]) or "none"
                raise fail(f"spider {spider!r} has no breaker for {host!r} (its breakers: {listed}; "
                           f"see fleet breakers list {spider})", EXIT_ARGS)
            return host, await q.breaker_reset(host)
        finally:
            await client.aclose()

    domain, released = asyncio.run(go())
    print(json.dumps({"spider": spider, "domain": domain, "state": "closed", "released": released,
                      "next": f"running workers take the released requests; with none running (cron), "
                              f"fleet run {spider} --resume RUN finishes the run"}))




@app.command()
def replay(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    url: Annotated[Optional[str], typer.Option("--url", help="The page's URL (its stored snapshot is used).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="A raw/, items/ or evidence/ key of the page.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", callback=run_arg, help="Run of the snapshot (default: newest that has it).")] = None,
    callback: Annotated[Optional[str], typer.Option(help="Callback to run (default: from the evidence, else parse; a CrawlSpider's rule from the URL).")] = None,
    arg: Annotated[Optional[list[str]], typer.Option("-a", "--arg", metavar="NAME=VALUE", help=SPIDER_ARG_HELP)] = None,
) -> None:
    """Re-run extraction offline on a stored snapshot; exit 0 when the required fields are there, 1 when
    drift persists. Check a selector fix against the very page that drifted, then reset the breaker."""
    from scraper.cli.replay import ReplayError, run_replay

    if bool(url) == bool(key):
        raise fail("give exactly one of --url URL or --key KEY")
    cfg = load_config()
    spidercls = spider_class(spider, cfg)
    try:
        report = run_replay(cfg, spidercls, url=url, key=key, run=run, callback=callback,
                            runs_lookup=lambda: asyncio.run(_runs(cfg, spider)), spider_args=spider_kwargs(arg))
    except ReplayError as exc:
        raise fail(str(exc)) from None
    print(json.dumps(report, indent=2, default=json_default))  # item values as the stored objects hold them
    raise typer.Exit(0 if report["ok"] else 1)


async def _runs(cfg: FleetConfig, spider: str) -> list[str]:
    client = await connect(redis_url_for(cfg))
    try:
        times = await (await open_queue(client, spider)).run_times()
        return sorted(times, key=lambda r: times[r], reverse=True)
    finally:
        await client.aclose()




app.add_typer(breakers_app, name="breakers")

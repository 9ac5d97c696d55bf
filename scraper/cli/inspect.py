"""fleet status, spiders, proxies, domains, metrics and down: looking at the fleet and its backlog."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import redis.asyncio as aioredis
import typer
from rich.table import Table

from scraper.cli.args import emitted, spider_arg
from scraper.cli.common import (
    EXIT_INFRA,
    connect,
    err,
    fail,
    fleet_settings,
    load_config,
    out,
    redis_url_for,
)
from scraper.infra import log
from scraper.infra.config import FleetConfig
from scraper.infra.embedded import redact_url, stop_embedded_redis
from scraper.infra.redishome import FleetHomeError
from scraper.queue import redisio
from scraper.queue.client import known_spiders
from scraper.queue.shards import open_queue
from scraper.worker.catalog import SpiderNotFound, describe, loader

__all__ = ["app"]

app = typer.Typer()

async def _status(cfg: FleetConfig, spider: str | None) -> dict[str, Any]:
    client = await connect(redis_url_for(cfg))
    try:
        names = [spider] if spider else await known_spiders(client)
        result: dict[str, Any] = {}
        for name in names:
            q = await open_queue(client, name)
            counts = await q.counts()
            brk = await q.breakers()
            result[name] = {**counts, "runs": await q.runs(),
                            "breakers": {d: {"state": b["state"], "parked": b["parked"]} for d, b in brk.items()},
                            "gated_domains": await q.gated_count()}
        return result
    finally:
        await client.aclose()


@app.command()
def status(
    spider: Annotated[Optional[str], typer.Argument(callback=spider_arg, help="Only this spider.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queues per spider: ready, in-flight, delayed, DLQ, and SEEN/DONE per run."""
    cfg = load_config()
    data = asyncio.run(_status(cfg, spider))
    if as_json:
        print(json.dumps(data))
        return
    if not data:
        out.print("no spiders have been seeded yet (fleet seed SPIDER --url URL)")
        return
    table = Table(title="fleet status")
    for col in ("spider", "ready", "inflight", "delayed", "parked", "dlq", "run", "seen", "done"):
        table.add_column(col, justify="right" if col not in ("spider", "run") else "left")
    for name, d in data.items():
        runs = d["runs"] or {"-": {"seen": 0, "done": 0}}
        first = True
        for run_id, rc in sorted(runs.items()):
            cells = [name, d["ready"], d["inflight"], d["delayed"], d["parked"], d["dlq"]] if first else [""] * 6
            table.add_row(*[str(c) for c in cells], run_id, str(rc["seen"]), str(rc["done"]))
            first = False
    out.print(table)
    gated = {n: d["gated_domains"] for n, d in data.items() if d.get("gated_domains")}
    for name, n in gated.items():
        out.print(f"{name}: {n} domain(s) behind the politeness gate (fleet domains {name})")


@app.command()
def spiders(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the spiders Fleet can run: Python (SPIDER_MODULES + FLEET_SPIDER_MODULES) and YAML specs
    (FLEET_SPIDERS_DIR; the format is documented in scraper/worker/yamlspec.py and the README). Exits 1 if a
    spec in FLEET_SPIDERS_DIR is invalid, after listing the valid ones."""
    cfg = load_config()
    settings = fleet_settings(cfg)
    try:
        sl = loader(settings)
    except SpiderNotFound as exc:
        raise fail(str(exc)) from None
    rows = [describe(sl.load(n)) for n in sorted(sl.list())]
    if as_json:
        print(json.dumps(rows))
    else:
        table = Table(title="spiders")
        for col in ("name", "kind", "module / spec", "required_fields", "item_callbacks"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["kind"], r["module"], ", ".join(r["required_fields"]),
                          ", ".join(r["item_callbacks"]))
        out.print(table)
    if sl.spec_errors:
        for e in sl.spec_errors:
            err.print(f"[red]invalid spider spec[/]: {e}", highlight=False)
        raise typer.Exit(1)


@app.command()
def domains(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="The spider.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per domain behind the politeness gate: in flight (fleet-wide), limit, AIMD window, spacing, recent
    rate, requests waiting in the workers."""
    cfg = load_config()

    async def go() -> list[dict[str, Any]]:
        client = await connect(redis_url_for(cfg))
        try:
            return await (await open_queue(client, spider)).domains()
        finally:
            await client.aclose()

    rows = asyncio.run(go())
    if as_json:
        print(json.dumps({"spider": spider, "domains": rows}))
        return
    if not rows:
        out.print(f"no domain of {spider} is gated (README: Crawling politely)")
        return
    table = Table(title=f"fleet domains {spider}")
    cols = ("domain", "inflight", "limit", "window", "spacing_s", "rate", "waiting", "latency_ms")
    for col in cols:
        table.add_column(col, justify="left" if col == "domain" else "right")
    for r in rows:
        table.add_row(*["-" if r[c] is None else str(r[c]) for c in cols])
    out.print(table)


@app.command()
def proxies(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Proxy health per target domain (ids only: credentials are never shown)."""
    from scraper.worker.proxies import ProxyConfigError, parse_proxies, proxy_report

    cfg = load_config()
    try:
        pool = parse_proxies(cfg.proxies)
    except ProxyConfigError as exc:
        raise fail(str(exc)) from None

    async def go() -> list[dict[str, Any]]:
        client = await connect(redis_url_for(cfg))
        try:
            return await proxy_report(client, pool)
        finally:
            await client.aclose()

    rows = asyncio.run(go())
    if emitted(rows, as_json, "no proxies configured (FLEET_PROXIES); requests go direct"):
        return
    table = Table(title="proxies")
    for col in ("id", "proxy", "domain", "state", "cooling_until", "successes", "bans", "latency_ms"):
        table.add_column(col)
    for r in rows:
        if not r["domains"]:
            table.add_row(r["id"], r["proxy"], "-", "unused", "", "0", "0", "")
        for dom, d in sorted(r["domains"].items()):
            until = (datetime.fromtimestamp(d["cooling_until"], timezone.utc).strftime("%H:%M:%S")
                     if d["cooling_until"] else "")
            table.add_row(r["id"], r["proxy"], dom, d["state"], until, str(d["successes"]),
                          str(d["bans"]), str(d["latency_ms"] or ""))
    out.print(table)


@app.command()
def metrics(
    spider: Annotated[Optional[list[str]], typer.Argument(callback=spider_arg, help="Only these spiders (default: every seeded one).")] = None,
    port: Annotated[int, typer.Option(help="Port of the /metrics endpoint (0: any free port, logged).")] = 9464,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 in a pod, so Prometheus can reach it.")] = "127.0.0.1",
    once: Annotated[bool, typer.Option("--once", help="Print the metrics once to stdout (Prometheus text format) and exit.")] = False,
) -> None:
    """Prometheus exporter of the queue backlog, read from Redis at every scrape: fleet_queue_ready,
    fleet_queue_inflight, fleet_queue_delayed, fleet_queue_parked, fleet_dlq_entries, fleet_breakers,
    fleet_run_seen/done, and fleet_up (0 when Redis could not be read: never reported as an empty queue).
    For KEDA's Prometheus scaler (deploy/k8s/keda-scaledobject.yaml) and alerts. Runs until SIGTERM."""
    import signal
    import threading

    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from scraper.infra.metrics import BacklogCollector

    cfg = load_config()
    url = redis_url_for(cfg)
    if spider:
        try:
            known = set(asyncio.run(_known_spiders(url)))
        except Exception:  # Redis down at start: the scrapes will say so (fleet_up 0)
            known = set(spider)
        for name in spider:
            if name not in known:
                err.print(f"[yellow]warning:[/] spider {name!r} has never been seeded on this Redis; its "
                          "figures stay 0 until it is", highlight=False)
    collector = BacklogCollector(lambda: _plain_client(url), spider)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if once:
        sys.stdout.write(generate_latest(registry).decode("utf-8"))
        if collector.last_error:
            err.print(f"[red]error:[/] cannot read the queue from Redis at {redact_url(url)}: "
                      f"{redact_url(collector.last_error)}", highlight=False)
            raise typer.Exit(EXIT_INFRA)
        return
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logger = log.get_logger(component="metrics")
    logger.info("metrics_serving", host=host, port=server.server_port, spiders=",".join(spider or []) or None)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    logger.info("metrics_stopped")
    log.flush()


async def _known_spiders(url: str) -> list[str]:
    client = await _plain_client(url)
    try:
        return await known_spiders(client)
    finally:
        await client.aclose()


async def _plain_client(url: str) -> aioredis.Redis:
    """A Redis client for the exporter's scrapes: no eviction-policy warnings on every scrape."""
    return redisio.client(url, socket_timeout=5, socket_connect_timeout=5)


@app.command()
def down() -> None:
    """Stop the embedded Redis (its AOF keeps the queues for next time)."""
    load_config()
    try:
        stopped = stop_embedded_redis()
    except FleetHomeError as exc:
        raise fail(str(exc)) from None
    print(json.dumps({"stopped": stopped}))



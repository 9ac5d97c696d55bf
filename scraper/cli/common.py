"""What every ``fleet`` command shares: configuration, Redis, the spider, exit codes, one-line errors.

Why a module of its own: ``fleet demo`` (scraper.cli.demo) and the seeding and worker helpers
(scraper.cli.seeding, scraper.cli.worker) need the same steps as the commands in scraper.cli.app; with them
here, none of those imports the CLI module (no cli ⇄ demo cycle) and no module calls another's private
helpers. Exit codes (README): 0 ok, 1 configuration or usage error, 2 bad arguments, 3 infrastructure
failure, 4 a run finished with DLQ entries, 5 a run ended incomplete.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import redis
import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.markup import escape
from scrapy import Spider
from scrapy.settings import Settings

from scraper.infra import log
from scraper.infra.config import ConfigError, FleetConfig
from scraper.infra.embedded import RedisConfigError, check_redis, redact_url, resolve_redis_url
from scraper.infra.redishome import FleetHomeError
from scraper.queue import redisio, storebind
from scraper.queue.keys import QueueError
from scraper.queue.runstate import run_tally
from scraper.queue.shards import open_queue
from scraper.worker.catalog import (
    SettingsError,
    SpiderNotFound,
    base_settings,
    check_setting_values,
    load_spider,
    worker_settings,
)
from scraper.worker.identity import ItemKeyError, item_key_of

__all__ = [
    "EXIT_ARGS",
    "EXIT_CONFIG",
    "EXIT_DLQ",
    "EXIT_INCOMPLETE",
    "EXIT_INFRA",
    "check_reachable",
    "check_seconds",
    "check_store",
    "connect",
    "default_run",
    "err",
    "fail",
    "fleet_settings",
    "load_config",
    "max_workers",
    "out",
    "redis_url_for",
    "run_summary",
    "spider_class",
    "spider_instance",
]

err = Console(stderr=True, soft_wrap=True)  # one-line errors: never wrapped at the terminal width
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes and CI logs get untruncated tables

EXIT_CONFIG = 1
EXIT_ARGS = 2
EXIT_INFRA = 3
EXIT_DLQ = 4
EXIT_INCOMPLETE = 5


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    # escaped: messages quote URLs and names, and "[/]" in one is rich markup, not text; soft_wrap: one
    # line whatever the terminal's width, for whoever greps the log
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def check_seconds(option: str, value: float | None, *, zero: bool) -> None:
    """A duration option is a finite number of seconds, > 0 (``zero``: >= 0), or a one-line error (exit 1).
    Why: typer takes "nan", "inf" and negatives as floats, and each meant a worker or a run that never ends
    (a NaN compares false with everything: no deadline, never idle long enough): cron would wait forever."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise fail(f"{option} must be a number of seconds {'>= 0' if zero else '> 0'}, not {value!r}")


def max_workers() -> int:
    """The most worker processes one ``fleet run`` starts: 16 per CPU core, at most 256. Why a bound: each
    worker is a Scrapy process of ~100 MB doing up to --concurrency fetches of its own, so more processes
    than that per core only contend; a typo (--workers 100000) ran the host out of memory."""
    return min(256, 16 * (os.cpu_count() or 1))


def load_config() -> FleetConfig:
    try:
        cfg = FleetConfig.from_env()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    log.configure(cfg.log_level, cfg.log_format)
    return cfg


def redis_url_for(cfg: FleetConfig, spidercls: type[Spider] | None = None, *, project: bool = True) -> str:
    """Fleet's Redis, resolved by this one function for every command (``fleet worker``, ``run``, ``seed``
    and the operator commands), so that they all look at the Redis the workers work: ``FLEET_REDIS_URL``;
    else scrapy-redis's ``REDIS_URL`` (or ``REDIS_HOST``/``REDIS_PORT``) of ``spidercls`` when it is a
    scrapy-redis spider and the command loaded it, else of a scrapy-redis project's settings module
    (scraper.worker.redisspider.fleet_redis_url); else the embedded redis-server. ``project=False``
    (``fleet demo``, ``fleet smoke``, which delete and flood their own keys): FLEET_REDIS_URL or the
    embedded server only, never a Redis a project's settings name."""
    if cfg.redis_url:
        return cfg.redis_url
    if not project:
        return _embedded_url()
    from scraper.worker.redisspider import fleet_redis_url

    url = fleet_redis_url(spidercls, fleet_settings(cfg))
    if url is not None:
        if url.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
            raise fail("the scrapy-redis REDIS_URL must start with redis://, rediss:// or unix:// "
                       "(or set FLEET_REDIS_URL, which takes precedence)")
        return url
    return _embedded_url()


def _embedded_url() -> str:
    """FLEET_REDIS_URL, or the embedded Redis's (started if need be): a FLEET_HOME that cannot hold it is
    a setting to fix (exit 1); a server that fails to start, an outage (exit 3)."""
    try:
        return resolve_redis_url()
    except FleetHomeError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    except RedisConfigError as exc:
        raise fail(str(exc), EXIT_INFRA) from None


async def connect(url: str) -> aioredis.Redis:
    client = redisio.client(url, socket_timeout=30, socket_connect_timeout=5)
    try:
        await client.ping()
        sync = redisio.sync_client(url, socket_timeout=10)
        try:
            for server in redisio.primaries(sync):  # a cluster: each primary's own eviction policy and AOF
                for warning in check_redis(server):
                    err.print(f"[yellow]warning:[/] {warning}", highlight=False)
        finally:
            sync.close()
    except RedisConfigError as exc:  # an evicting Redis: a configuration to fix, not an outage
        await client.aclose()
        raise fail(str(exc), EXIT_CONFIG) from None
    except (OSError, redis.exceptions.RedisError) as exc:
        await client.aclose()
        hint = ""
        if url.lower().startswith("rediss://"):
            hint = " (rediss:// needs a Redis that speaks TLS; use redis:// for a plain one)"
        detail = log.redact(str(exc))[:300] or type(exc).__name__
        raise fail(f"cannot reach Redis at {redact_url(url)}: {detail}{hint}", EXIT_INFRA) from None
    return client


async def check_reachable(url: str, patience: float = 0.0) -> None:
    """Fail fast, before Scrapy starts, on an unreachable or evicting Redis. ``patience``: seconds a refused or
    timed-out connection is tried again first, so that a worker started while Redis restarts (`fleet run`'s,
    a pod's) rides the blip out as it would once running, instead of exiting 3 at once."""
    deadline, delay, said = time.monotonic() + patience, 0.2, False
    while time.monotonic() < deadline:
        probe = redisio.client(url, socket_timeout=5, socket_connect_timeout=2)
        try:
            await probe.ping()
            break
        except (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if not said:
                said = True
                err.print(f"[yellow]warning:[/] Redis at {redact_url(url)} is not answering; trying again for up "
                          f"to {patience:.0f} s", highlight=False, soft_wrap=True)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        except Exception:  # anything else (a password refused...): connect() says what, at once
            break
        finally:
            await probe.aclose()
    client = await connect(url)
    await client.aclose()



def default_run() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def check_store(cfg: FleetConfig) -> None:
    """FLEET_STORE names a store Fleet can open (file:// or s3://bucket/prefix), or a one-line error (exit 1).
    Called before ``fleet run`` seeds and before a worker starts: a run whose workers cannot write must not
    be seeded (its requests would wait in READY for a spider that can never start). Nothing is written."""
    from scraper.store.backends import check_store_uri

    try:
        check_store_uri(cfg.store)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: file://~nosuchuser/ (expanduser)
        raise fail(f"FLEET_STORE: {exc}") from None


def check_store_binding(cfg: FleetConfig, spidercls: type[Spider], *, run: str | None = None,
                        spider_too: bool = True) -> None:
    """The spider's (and ``run``'s) data stays in one store: exit 1 with one line when Redis records another store
    for them (scraper.queue.storebind; a worker records its own once it has written). Before ``fleet run`` seeds
    and before a worker starts."""
    from scraper.store.backends import store_identity

    store = store_identity(cfg.store)
    _refused_in_one_line(cfg, spidercls, lambda client: storebind.check_store(
        client, str(spidercls.name), store, run=run, spider_too=spider_too))


def _refused_in_one_line(cfg: FleetConfig, spidercls: type[Spider],
                         check: Callable[[aioredis.Redis], Awaitable[Any]]) -> None:
    """Run ``check`` on a client of the spider's Redis; its QueueError is the one-line exit 1."""
    async def go() -> None:
        client = await connect(redis_url_for(cfg, spidercls))
        try:
            await check(client)
        finally:
            await client.aclose()

    try:
        asyncio.run(go())
    except QueueError as exc:
        raise fail(str(exc)) from None


def fleet_settings(cfg: FleetConfig) -> Settings:
    """base_settings (Fleet's and the Scrapy project's settings modules); a project settings module that
    cannot be imported or would lose items is a configuration error here (exit 1), in one line."""
    try:
        return base_settings(cfg)
    except SettingsError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None


def spider_class(name: str, cfg: FleetConfig) -> type[Spider]:
    """The spider class, its ``item_key`` declaration checked: a bad one is a configuration error
    here (exit 1) rather than a crash on the first item."""
    try:
        cls = load_spider(name, fleet_settings(cfg))
        item_key_of(cls)
        check_setting_values(cls)
        return cls
    except (SpiderNotFound, ItemKeyError, SettingsError) as exc:
        raise fail(str(exc)) from None



def spider_instance(spidercls: type[Spider], cfg: FleetConfig, why: str,
                    kwargs: dict[str, str] | None = None) -> Spider:
    """The spider as Scrapy makes it (``from_crawler`` on a Crawler with the worker's settings), for the commands
    that call its code outside a worker: ``fleet seed``/``run`` read its ``start()``, ``fleet replay`` its
    callbacks. A plain ``spidercls()`` had no ``settings`` nor ``crawler``, so a ``start()`` reading
    ``self.settings`` or an attribute ``from_crawler`` sets crashed. The Crawler is never started: no engine,
    no reactor; its stats are an in-memory collector for a ``from_crawler`` that counts. ``kwargs``: the spider
    arguments (``-a NAME=VALUE``). Whatever building it raises (a required spider argument missing) is a one-line
    error naming ``why``."""
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import MemoryStatsCollector

    try:
        # rendered=False: seeding and replay fetch nothing, so a rendering spider needs no Chromium here
        crawler = Crawler(spidercls, worker_settings(spidercls, fleet_settings(cfg), rendered=False))
        crawler.stats = MemoryStatsCollector(crawler)
        spider = spidercls.from_crawler(crawler, **(kwargs or {}))
    except typer.Exit:
        raise
    except Exception as exc:
        raise fail(f"cannot create spider {spidercls.name!r} {why}: {type(exc).__name__}: {exc}") from None
    crawler.spider = spider
    return spider


def check_shards(cfg: FleetConfig, spidercls: type[Spider]) -> None:
    """Record FLEET_QUEUE_SHARDS for the spider, or exit 1 with one line when Redis holds its work in another
    number of shards (scraper.queue.shards.open_queue): before any worker starts or seed is written."""
    _refused_in_one_line(cfg, spidercls, lambda client: open_queue(
        client, str(spidercls.name), shards=cfg.queue_shards))


async def run_summary(cfg: FleetConfig, spider: str, run: str, *, per_run: bool = False,
                      spidercls: type[Spider] | None = None) -> dict[str, Any]:
    """The run's figures in Redis. ``counts`` are the spider's queues (all its runs); with ``per_run``,
    ``backlog`` is this run's ready / inflight / delayed / parked (read from the queued envelopes: exact
    once the run's workers stopped) and ``backlog_scope`` "run", or the spider's counts and "spider" when
    the backlog is too large to read per run (scraper.queue.runstate.BACKLOG_LIMIT)."""
    client = await connect(redis_url_for(cfg, spidercls))
    try:
        q = await open_queue(client, spider)
        counts = await q.counts()
        runs = await q.runs()
        dlq_run = 0
        async for _ in q.dlq_iter(run):
            dlq_run += 1
        backlog, scope = None, "spider"
        if per_run:
            backlog = await q.run_backlog(run)
            scope = "run" if backlog is not None else "spider"
        return {"counts": counts, "run": runs.get(run, {"seen": 0, "done": 0}), "dlq_run": dlq_run,
                "known": run in runs, "breakers": await q.breakers(),
                "cancelled": bool(await client.hexists(q.keys.cancelled, run)),
                "tally": await run_tally(client, q.keys, run) if per_run else {},
                "backlog": backlog if backlog is not None else
                {k: int(counts.get(k, 0)) for k in ("ready", "inflight", "delayed", "parked")},
                "backlog_scope": scope}
    finally:
        await client.aclose()


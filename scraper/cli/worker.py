"""One worker process: a Scrapy crawler bound to the fleet queue, with Fleet's signal handling.

Why here and not in scraper.cli.app: ``fleet worker`` and ``fleet demo`` both run one, and demo must not
import the CLI module. The runtime is reached only through :func:`scraper.worker.ports.fleet_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from rich.markup import escape

from scraper.cli import runreport
from scraper.cli.args import check_spider_kwargs
from scraper.cli.common import (
    EXIT_CONFIG,
    EXIT_INFRA,
    check_reachable,
    check_seconds,
    check_shards,
    check_store,
    check_store_binding,
    err,
    fail,
    fleet_settings,
    load_config,
    redis_url_for,
    spider_class,
)
from scraper.infra import log
from scraper.infra.config import MAX_CONCURRENCY
from scraper.worker.catalog import worker_settings
from scraper.worker.ports import fleet_of

#: Seconds after FLEET_SHUTDOWN_GRACE that a worker waits for Scrapy's close before it releases its leases
#: and exits by itself (a callback that never returns blocks the close), and that `fleet run --deadline`
#: waits past the grace before it SIGKILLs a worker that did neither.
SHUTDOWN_CLOSE_WAIT = 20.0
#: Seconds a worker starting while Redis does not answer tries again before it exits 3 (a restart, a failover)
START_PATIENCE = 15.0

__all__ = ["SHUTDOWN_CLOSE_WAIT", "concurrency_settings", "install_signals", "run_worker"]


def run_worker(
    spider: str, concurrency: int | None, until_idle: float | None,
    on_crawler: Any = None, spider_args: dict[str, str] | None = None, run: str | None = None,
    store_checked: bool = False,
) -> int:
    """Run one Scrapy crawler process bound to the fleet queue; returns the exit code.

    ``on_crawler(crawler)``, when given, is called once the crawler exists (the demo's progress bar reads
    its item count). ``spider_args``: ``-a NAME=VALUE``, given to the spider as ``scrapy crawl`` gives them.
    ``run``: the run of requests queued outside any lease (``FleetScheduler``; setting ``FLEET_RUN``).
    ``store_checked``: its `fleet run` checked the spider's store before seeding (the run it seeded is work its
    own workers must not be refused for: scraper.queue.storebind); the run's store is checked all the same."""
    from scrapy.crawler import AsyncCrawlerProcess

    cfg = load_config()
    settings = fleet_settings(cfg)
    spidercls = spider_class(spider, cfg)
    check_spider_kwargs(spidercls, spider_args or {})  # before the crawler: its failure is an asyncio traceback
    try:
        settings = worker_settings(spidercls, settings)
    except RuntimeError as exc:  # scraper.worker.render.ChromiumNotFound: says what to install
        raise fail(str(exc)) from None
    if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
        raise fail(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, not {concurrency}")
    check_seconds("--until-idle", until_idle, zero=True)
    check_store(cfg)
    concurrency_settings(settings, concurrency)
    if until_idle is not None:
        settings.set("FLEET_UNTIL_IDLE", until_idle, priority="cmdline")
    if run is not None:
        settings.set("FLEET_RUN", run, priority="cmdline")
    _check_politeness(spider, spidercls, settings)
    from scraper.worker.proxies import ProxyConfigError, parse_proxies

    try:
        parse_proxies(cfg.proxies)
    except ProxyConfigError as exc:
        raise fail(str(exc)) from None
    url = redis_url_for(cfg, spidercls)
    asyncio.run(check_reachable(url, patience=min(START_PATIENCE, cfg.redis_outage_max)))
    check_shards(cfg, spidercls)
    check_store_binding(cfg, spidercls, run=run, spider_too=not store_checked)  # where the spider's data is
    settings.set("FLEET_REDIS_URL", url, priority="cmdline")
    settings.set("LOG_INSTALL_ROOT_HANDLER", False, priority="cmdline")
    log.redact_settings_dump()  # FLEET_LOG_LEVEL=DEBUG prints Scrapy's settings dump: no secret in it
    process = AsyncCrawlerProcess(settings)
    log.configure(cfg.log_level, cfg.log_format)
    _replaced_notice(spider, spidercls, settings, cfg.worker_id)
    crawler = process.create_crawler(spidercls)
    if on_crawler is not None:
        on_crawler(crawler)
    process.crawl(crawler, **(spider_args or {}))
    install_signals(crawler)
    process.start(install_signal_handlers=False)
    rt = fleet_of(crawler)
    if process.bootstrap_failed and not (rt is not None and rt.fatal):
        err.print("[bold red]error:[/] the worker failed to start; see the log above", highlight=False)
        return EXIT_CONFIG
    runreport.write_worker_stats(crawler.stats.get_stats() if crawler.stats is not None else {})
    if rt is not None and rt.fatal:
        err.print(f"[bold red]error:[/] {escape(str(rt.fatal))}", highlight=False, soft_wrap=True)
        return int(rt.exit_code or EXIT_INFRA)
    return 0


def concurrency_settings(settings: Any, concurrency: int | None) -> None:
    """``--concurrency`` (``cmdline`` priority), and the worker's concurrency as its default per-domain limit.

    That default is at ``project`` priority (20) so that a CONCURRENT_REQUESTS_PER_DOMAIN the user set wins
    (the Scrapy project's settings.py at 25, the spider's custom_settings or YAML settings at 30): a spider
    that asks for 1 request at a time per domain gets 1, not the worker's 32. Being below 25 it is also no
    politeness value (scraper.policy.politeness): it gates nothing, fleet-wide."""
    if concurrency is not None:
        settings.set("CONCURRENT_REQUESTS", concurrency, priority="cmdline")
    settings.set("CONCURRENT_REQUESTS_PER_DOMAIN", settings.getint("CONCURRENT_REQUESTS"), priority="project")


def _check_politeness(name: str, spidercls: Any, settings: Any) -> None:
    """A politeness setting the worker cannot use fails here, in one line, not in the crawler."""
    from scraper.policy.politeness import Politeness, PolitenessError

    probe = settings.copy()
    spidercls.update_settings(probe)
    try:
        Politeness.from_settings(probe, getattr(spidercls, "domain_settings", None))
    except PolitenessError as exc:  # a value of the spider's, or of its Scrapy project's settings.py
        raise fail(f"spider {name} (its settings or its project's settings.py): {exc}", EXIT_CONFIG) from None


def _replaced_notice(name: str, spidercls: Any, settings: Any, worker: str) -> None:
    """One INFO line naming the scrapy-redis scheduling settings (custom_settings or the project's
    settings module) that Fleet's leased queue and SEEN sets replace."""
    from scraper.worker.redisspider import replaced_settings

    replaced = replaced_settings(spidercls, settings)
    if replaced:
        log.get_logger(worker=worker, spider=name).info(
            "scrapy_redis_settings_replaced", settings=replaced, note="Fleet's leased queue and SEEN sets do their work")


#: Seconds after a first stop signal during which another one is the same stop, not a request to exit now.
REPEAT_WINDOW = 2.0


def install_signals(crawler: Any) -> None:
    """First SIGTERM/SIGINT: graceful (stop leasing, finish within the grace, release). Second: exit now,
    unless it came within ``REPEAT_WINDOW`` of the first: a SIGTERM to the process group (systemd, ``timeout``,
    ``kill -- -PGID``) reaches the worker and ``fleet run``, which forwards one too; that is the same stop."""
    import signal

    from twisted.internet import reactor

    state = {"count": 0, "first": 0.0}
    _keep: list[Any] = []  # tasks must be referenced until done

    def handler(signum: int, _frame: Any) -> None:
        state["count"] += 1
        if state["count"] > 1:
            if time.monotonic() - state["first"] < REPEAT_WINDOW:
                return
            os._exit(130)
        state["first"] = time.monotonic()
        rt = fleet_of(crawler)

        def begin() -> None:
            if rt is not None:
                rt.request_stop(signal.Signals(signum).name)

                def force() -> None:
                    if crawler.engine is not None and crawler.engine.running and not rt.closed:
                        rt.releasing = True
                        _keep.append(asyncio.ensure_future(crawler.engine.close_spider_async(reason="shutdown")))

                async def hard_exit() -> None:
                    # Scrapy's close waits for every callback to return; one stuck in an await forever
                    # would keep the worker (and a cron `fleet run`) alive: release the leases, then go.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(rt.release_now("shutdown_timeout"), 10)
                    with contextlib.suppress(Exception):  # fleet run's summary still counts this worker's outcomes
                        runreport.write_worker_stats(crawler.stats.get_stats() if crawler.stats is not None else {})
                    os._exit(0)

                def last_resort() -> None:
                    if not rt.closed:
                        _keep.append(asyncio.ensure_future(hard_exit()))

                clock: Any = reactor  # zope interface methods read as taking self: mypy misreads callLater
                clock.callLater(rt.config.shutdown_grace, force)
                clock.callLater(rt.config.shutdown_grace + SHUTDOWN_CLOSE_WAIT, last_resort)
            elif crawler.engine is not None:
                _keep.append(asyncio.ensure_future(crawler.engine.close_spider_async(reason="shutdown")))

        reactor.callFromThread(begin)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


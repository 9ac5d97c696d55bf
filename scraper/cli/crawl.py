"""fleet seed, fleet worker and fleet run: putting work in the queue and working it off (cron's commands)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from scraper.cli import runreport
from scraper.cli.args import SPIDER_ARG_HELP, check_spider_kwargs, run_arg, spider_arg, spider_kwargs
from scraper.cli.common import (
    EXIT_ARGS,
    EXIT_INFRA,
    check_seconds,
    check_shards,
    check_store,
    check_store_binding,
    default_run,
    err,
    fail,
    fleet_settings,
    load_config,
    max_workers,
    redis_url_for,
    run_summary,
    spider_class,
)
from scraper.cli.data import export_after_run
from scraper.cli.manifests import RunManifest
from scraper.cli.seeding import check_urls_path, seed_run
from scraper.cli.worker import SHUTDOWN_CLOSE_WAIT, run_worker
from scraper.infra import log, progress
from scraper.infra.config import FleetConfig
from scraper.queue.client import QueueError
from scraper.queue.entrycheck import callback_name_ok
from scraper.queue.redisio import REDIS_ERRORS
from scraper.worker.catalog import SettingsError, item_pipelines

__all__ = ["app"]

app = typer.Typer()

@app.command()
def seed(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name (see `fleet spiders`).")],
    url: Annotated[Optional[list[str]], typer.Option("--url", help="A URL to enqueue; repeatable.")] = None,
    urls: Annotated[Optional[str], typer.Option("--urls", help="File with one URL a line, or - for stdin.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", callback=run_arg, help="Run id; default: a UTC timestamp.")] = None,
    callback: Annotated[Optional[str], typer.Option(
        help="Spider method that parses these URLs (default: parse), e.g. parse_product.")] = None,
    arg: Annotated[Optional[list[str]], typer.Option("-a", "--arg", metavar="NAME=VALUE", help=SPIDER_ARG_HELP)] = None,
) -> None:
    """Enqueue requests for SPIDER; without --url/--urls, the spider's own start requests.

    A URL already enqueued in the same run is skipped (SEEN). Prints JSON {spider, run, enqueued, skipped}.
    A URL Fleet would not fetch (a scheme FLEET_SCHEMES does not allow, no host, malformed, a line that
    is not UTF-8) is rejected with one line on stderr; the others are still enqueued, the JSON then has
    "rejected": N and the exit code is 2. Items the spider's start() yields are not stored (Fleet stores
    items per request): a warning, and "start_items_dropped": N.
    """
    cfg = load_config()
    spidercls = spider_class(spider, cfg)
    if callback is not None and not (callback_name_ok(callback) and callable(getattr(spidercls, callback, None))):
        raise fail(f"spider {spider!r} has no method {callback!r:.60} to use as --callback (a parse method: "
                   f"not one of Scrapy's Spider methods, nor a dunder or name-mangled one)")
    if urls is not None and urls != "-":
        check_urls_path(urls)
    if callback is not None and not (url or urls):
        raise fail("--callback applies to --url/--urls; the spider's start requests name their own callbacks")
    run_id = run or default_run()
    try:
        result = asyncio.run(seed_run(cfg, spidercls, run_id, list(url or []), urls, callback, spider_kwargs(arg)))
    except QueueError as exc:
        raise fail(str(exc)) from None
    print(json.dumps(result))
    if result.get("rejected"):
        raise typer.Exit(EXIT_ARGS)



@app.command()
def worker(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    concurrency: Annotated[Optional[int], typer.Option(help="Concurrent requests (default FLEET_CONCURRENCY, 32).")] = None,
    until_idle: Annotated[Optional[float], typer.Option(
        "--until-idle", help="Exit 0 once READY, IN-FLIGHT and DELAYED of SPIDER stayed empty this many seconds.")] = None,
    arg: Annotated[Optional[list[str]], typer.Option("-a", "--arg", metavar="NAME=VALUE", help=SPIDER_ARG_HELP)] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", callback=run_arg,
        help="Run of the requests the spider queues outside any lease (crawler.engine.crawl, e.g. from a spider_idle "
             "handler); default: the run of this worker's latest lease. The worker still leases every run's requests.")] = None,
    store_checked: Annotated[bool, typer.Option("--store-checked", hidden=True)] = False,  # by its `fleet run`
) -> None:
    """Run one worker: lease, fetch, classify, write, acknowledge; until a signal or --until-idle."""
    raise typer.Exit(run_worker(spider, concurrency, until_idle, spider_args=spider_kwargs(arg), run=run,
                                store_checked=store_checked))



@app.command("run")
def run_cmd(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    urls: Annotated[Optional[str], typer.Option("--urls", help="File of URLs (or -); default: the spider's start requests.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes to start (1 to 16 per CPU core, at most 256).")] = 1,
    run: Annotated[Optional[str], typer.Option("--run", callback=run_arg, help="Run id; default: a UTC timestamp.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="RUN", callback=run_arg,
        help="Drain the existing run RUN without seeding (after `fleet breakers reset`, or a run cut by --deadline).")] = None,
    deadline: Annotated[Optional[float], typer.Option(
        "--deadline", metavar="SECONDS",
        help="Stop the workers gracefully after this long (their leases go back to READY); exit 5 if work was left.")] = None,
    idle: Annotated[float, typer.Option("--idle", help="Seconds the queue must stay empty before workers exit.")] = 2.0,
    export: Annotated[bool, typer.Option(
        "--export", help="At the end, export the run as Parquet (as `fleet export`); the summary gets an export field. "
                         "--resume of a run exported before exports it again.")] = False,
    arg: Annotated[Optional[list[str]], typer.Option("-a", "--arg", metavar="NAME=VALUE", help=SPIDER_ARG_HELP)] = None,
) -> None:
    """Cron one-shot: seed (or --resume a run), work until the queue drains, print a JSON summary.

    Keeps the run's manifest (runs/spider=SPIDER/run=RUN/manifest.json in FLEET_STORE) up to date: at
    start, every 10 s, and at the end with "complete" (see `fleet runs`).

    Exit 0 when the run drained with nothing of it parked; 5 incomplete (requests parked behind a drift
    breaker, work left, or --deadline passed); 4 drained but some requests ended in the DLQ;
    3 infrastructure failure; 2 drained, but some input URLs were rejected (see `fleet seed`) or requests
    the spider yielded could not be queued ("discovered_rejected"); 1 configuration error. With --export, the run is exported at the end (unless the run itself failed with
    exit 3) and an export failure is exit 3 too.
    """
    spider_args = spider_kwargs(arg)
    with _sigterm_ends_run():
        cfg = load_config()
        if not 1 <= workers <= max_workers():
            raise fail(f"--workers must be from 1 to {max_workers()} (16 per CPU core here, at most 256), "
                       f"not {workers}: for more, run fleet worker on more hosts")
        check_seconds("--deadline", deadline, zero=False)
        check_seconds("--idle", idle, zero=True)
        check_store(cfg)
        if urls is not None and urls != "-":
            check_urls_path(urls)
        if resume is not None and (run is not None or urls is not None):
            raise fail("--resume RUN drains an existing run: it takes neither --run nor --urls")
        spidercls = spider_class(spider, cfg)
        check_spider_kwargs(spidercls, spider_args)  # before seeding (also --resume): every worker would fail
        try:  # before seeding: a spider whose workers would refuse to start gets no run
            item_pipelines(spidercls, fleet_settings(cfg).getdict("ITEM_PIPELINES"))
        except SettingsError as exc:
            raise fail(str(exc)) from None
        from scraper.worker.proxies import ProxyConfigError, parse_proxies

        try:  # before seeding, as every worker checks it: a bad FLEET_PROXIES left a seeded run and no worker
            parse_proxies(cfg.proxies)
        except ProxyConfigError as exc:
            raise fail(str(exc)) from None
        check_shards(cfg, spidercls)
        check_store_binding(cfg, spidercls, run=resume or run)  # a new run's default id is bound by its workers'
        started = time.time()
        if resume is not None:
            run_id = resume
            known = asyncio.run(run_summary(cfg, spider, run_id, spidercls=spidercls))
            if not known["known"]:  # a RUN that names nothing is a bad argument, as in `fleet cancel`
                raise fail(f"spider {spider!r} has no run {run_id!r} to resume (see fleet status {spider})", EXIT_ARGS)
            if known["cancelled"]:
                raise fail(f"run {run_id!r} of spider {spider!r} was cancelled (fleet cancel): nothing to resume", EXIT_ARGS)
            seeded = {"enqueued": 0, "skipped": 0, "rejected": 0}
        else:
            run_id = run or default_run()
            seeded = asyncio.run(seed_run(cfg, spidercls, run_id, [], urls, spider_args=spider_args))
        runlog = log.get_logger(component="run")
        runlog.info("run_started", spider=spider, run=run_id, resumed=resume is not None, seeded=seeded["enqueued"],
                    skipped=seeded["skipped"], workers=workers, deadline_s=deadline)
        env = dict(os.environ)
        env["FLEET_REDIS_URL"] = redis_url_for(cfg, spidercls)
        manifest = RunManifest(cfg, env["FLEET_REDIS_URL"], spider, run_id, spidercls, writer="fleet run",
                               seeded=None if resume is not None else seeded["enqueued"])
        manifest.write(final=False)
        cmd = [sys.executable, "-m", "scraper.cli", "worker", spider, "--until-idle", str(idle), "--run", run_id, "--store-checked",
               *(f"--arg={k}={v}" for k, v in spider_args.items())]  # every worker's spider gets them too
        deadline_at = None if deadline is None else time.monotonic() + deadline
        with tempfile.TemporaryDirectory(prefix="fleet-run-") as tmp:
            stats_files = [Path(tmp) / f"worker-{i}.json" for i in range(workers)]
            envs = [{**env, runreport.STATS_ENV: str(f)} for f in stats_files]
            if _TERMINATED.is_set():  # SIGTERM while it seeded: no workers started, the run is left for --resume
                codes: list[int] = []
                cut = True
            elif progress.enabled(cfg.log_format):
                codes, cut = _run_workers_with_progress(cmd, envs, env["FLEET_REDIS_URL"], spider, run_id,
                                                        cfg.log_level, deadline_at, manifest.tick)
            else:
                procs = [subprocess.Popen(cmd, env=e) for e in envs]
                codes, cut = _wait_workers(procs, deadline_at, manifest.tick)
            worker_stats = runreport.merge_worker_stats(stats_files)
        try:
            summary = asyncio.run(run_summary(cfg, spider, run_id, per_run=True, spidercls=spidercls))
        except (typer.Exit, *REDIS_ERRORS) as exc:
            if isinstance(exc, typer.Exit) and exc.exit_code != EXIT_INFRA:
                raise
            # Redis went away while the workers ran (they exited 3): cron still gets a summary of what is
            # known, its exit code and why; the manifest, whose figures come from Redis, is its last progress
            # write, marked final and incomplete with the same reason
            why = "Redis was unreachable at the end of the run: its figures (seen, done, DLQ, backlog) are unknown"
            if not isinstance(exc, typer.Exit):
                err.print(f"[bold red]error:[/] {why}: {type(exc).__name__}", highlight=False, soft_wrap=True)
            partial = {"spider": spider, "run": run_id, "resumed": resume is not None, "seeded": seeded["enqueued"],
                       "skipped": seeded["skipped"], "rejected": seeded.get("rejected", 0), **worker_stats,
                       "discovered": None, "seen": None, "done": None, "dlq": None, "parked": None, "pending": None,
                       "backlog_scope": None, "breakers_open": None, "redis_unreachable": True,
                       "deadline_passed": cut, "workers": workers, "worker_exit_codes": codes,
                       "elapsed_s": round(time.time() - started, 2), "store": cfg.store,
                       "terminated": _TERMINATED.is_set()}
            partial["manifest"] = manifest.write_unreachable(exit_code=EXIT_INFRA, why=why,
                                                             outcomes=worker_stats["outcomes"],
                                                             ignored=worker_stats["ignored"])
            runlog.info("run_finished", exit_code=EXIT_INFRA, **{k: v for k, v in partial.items() if k != "store"})
            print(json.dumps(partial))
            raise typer.Exit(EXIT_INFRA) from None
        result = runreport.summarize(
            spider=spider, run=run_id, resumed=resume is not None, seeded=seeded["enqueued"],
            run_seeded=manifest.seeded if isinstance(manifest.seeded, int) else None,
            skipped=seeded["skipped"], rejected=seeded.get("rejected", 0), seen=summary["run"]["seen"], done=summary["run"]["done"],
            dlq=summary["dlq_run"], queue=summary["backlog"], queue_scope=summary["backlog_scope"],
            breakers=summary["breakers"], workers=worker_stats,
            worker_codes=codes, deadline_passed=cut, elapsed_s=time.time() - started, store=cfg.store,
        )
        tally = summary.get("tally") or {}
        if "objects" in tally:  # this run's own, from its workers' tallies: workers serve every run of the spider
            result["objects"], result["items"] = int(tally["objects"]), int(tally.get("items", 0))
        result["cancelled"] = summary["cancelled"]
        result["terminated"] = _TERMINATED.is_set()  # SIGTERM cut it (deadline_passed is then true as well)
        code, why = runreport.exit_code(result)
        if resume is not None and not export and isinstance(manifest.base.get("export"), dict):
            # the run was exported before it was cut (cron's --export): the export must match the finished run,
            # not the part the first invocation saw (its manifest would say complete over a partial export)
            export = True
        if export and code != EXIT_INFRA:
            result["export"], failed = export_after_run(cfg, spider, run_id)
            if failed:
                # the run's own verdict, kept with the failure: a later `fleet export` that succeeds gives it back
                # to the manifest (scraper.cli.manifests.record_export)
                result["export"] = {**result["export"], "run_exit_code": code, "run_why": why}
                code, why = EXIT_INFRA, failed
        result["manifest"] = manifest.write(final=True, exit_code=code, why=why, outcomes=worker_stats["outcomes"],
                                            ignored=worker_stats["ignored"], export=result.get("export"),
                                            rejected={"rejected": int(seeded.get("rejected", 0)),
                                                      "discovered_rejected": worker_stats["discovered_rejected"]})
        runlog.info("run_finished", exit_code=code, **{k: v for k, v in result.items() if k != "store"})
        print(json.dumps(result))
        if code:
            err.print(f"[bold red]error:[/] {why}" if code == EXIT_INFRA else f"[bold yellow]fleet run:[/] {why}",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(code)


#: Set by SIGTERM to ``fleet run`` (Kubernetes stopping its pod, where it runs as PID 1 and would otherwise
#: ignore the signal): the run ends as at its deadline (workers stop gracefully, leases released, summary,
#: final manifest, exit 5 when work is left).
_TERMINATED = threading.Event()


@contextlib.contextmanager
def _sigterm_ends_run() -> Iterator[None]:
    """While ``fleet run`` runs, SIGTERM sets ``_TERMINATED`` instead of killing it (as PID 1 it would be
    ignored), and so does a first SIGINT (Ctrl-C, ``timeout -s INT``): the run ends as at its deadline, with its
    summary, its final manifest and exit 5 when work is left, where Python's KeyboardInterrupt left exit 130, no
    summary and a manifest saying the run was still being worked on. A second SIGINT aborts as before. The
    previous handlers come back after. Off the main thread (an embedding caller) nothing is installed."""
    import signal as _signal

    def stop(signum: int, frame: object) -> None:
        if signum == _signal.SIGINT and _TERMINATED.is_set():
            raise KeyboardInterrupt
        _TERMINATED.set()

    _TERMINATED.clear()
    try:
        previous = {sig: _signal.signal(sig, stop) for sig in (_signal.SIGTERM, _signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            _signal.signal(sig, handler)


def _wait_workers(procs: list[subprocess.Popen[bytes]], deadline_at: float | None,
                  tick: Callable[[], None] | None = None) -> tuple[list[int], bool]:
    """Wait for the workers; past ``deadline_at`` (monotonic) send each a SIGTERM once (graceful: they
    stop leasing, finish within FLEET_SHUTDOWN_GRACE and release the rest to READY). ``tick`` is called
    on every poll (the run's progress manifest). A SIGTERM to ``fleet run`` itself (``_TERMINATED``) cuts the
    run the same way. Returns the exit codes and whether the deadline (or SIGTERM) cut the run."""
    import signal as _signal

    cut = False
    kill_at: float | None = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if not cut and ((deadline_at is not None and now >= deadline_at) or _TERMINATED.is_set()):
            cut = True
            kill_at = now + FleetConfig.from_env().shutdown_grace + 2 * SHUTDOWN_CLOSE_WAIT
            for p in procs:
                if p.poll() is None:
                    p.send_signal(_signal.SIGTERM)
        if kill_at is not None and now >= kill_at:
            kill_at = None
            for p in procs:  # neither finished nor exited by itself: its leases expire and are reaped
                if p.poll() is None:
                    p.kill()
        if tick is not None:
            tick()
        time.sleep(0.1)
    # a worker our own SIGTERM ended before it had installed its handlers (still starting up) held no
    # lease; one we had to SIGKILL left its leases to expire (the run is incomplete either way)
    ours = (-_signal.SIGTERM, -_signal.SIGKILL)
    codes = [0 if cut and p.returncode in ours else int(p.returncode) for p in procs]
    return codes, cut


def _run_workers_with_progress(
    cmd: list[str], envs: list[dict[str, str]], url: str, spider: str, run: str, level: str,
    deadline_at: float | None, tick: Callable[[], None] | None = None,
) -> tuple[list[int], bool]:
    """``fleet run`` on a terminal: the workers' stderr comes through this process, which draws the run's
    bar and prints their events above it (from WARNING up unless FLEET_LOG_LEVEL is set; their INFO
    events still arrive, for the item count). The workers write JSON, parsed here, whatever the
    terminal: their stderr is a pipe."""
    extra = {"FLEET_LOG_FORMAT": "json", "FLEET_LOG_LEVEL": "DEBUG" if level == "DEBUG" else "INFO"}
    with progress.RunProgress(url, spider, run) as bar:
        procs = [subprocess.Popen(cmd, env={**e, **extra}, stderr=subprocess.PIPE) for e in envs]
        for p in procs:
            assert p.stderr is not None
            bar.forward(p.stderr, progress.display_level())
        try:
            codes, cut = _wait_workers(procs, deadline_at, tick)
        except KeyboardInterrupt:
            # Ctrl-C reached the workers too (one process group): they stop gracefully, releasing their
            # leases, and their last lines must still find the pipe open. A second Ctrl-C aborts.
            codes, cut = [p.wait() for p in procs], False
        bar.drain()
    return codes, cut

"""The ``fleet`` command line (docs/architecture.md, "CLI and exit codes").

Results that scripts read (seed counts, run summaries, ``--json`` views) go to stdout as JSON; logs go
to stderr as JSON events. Exit codes: 0 success, 1 usage or configuration error, 2 bad arguments
(typer; or input URLs ``fleet seed`` rejected), 3 infrastructure failure (Redis/store unreachable), 4 a
run finished with requests in the DLQ, 5 a run ended incomplete (parked requests, an open breaker, work
left, or ``--deadline`` passed).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import redis.asyncio as aioredis
import typer
from rich.table import Table

from scraper import log, progress, redisio, runreport
from scraper.catalog import SpiderNotFound, base_settings, describe, loader
from scraper.cli_common import (
    EXIT_ARGS,
    EXIT_CONFIG,
    EXIT_DLQ,
    EXIT_INCOMPLETE,
    EXIT_INFRA,
    check_reachable,
    connect,
    default_run,
    err,
    fail,
    load_config,
    out,
    redis_url_for,
    run_summary,
    spider_class,
)
from scraper.config import FleetConfig
from scraper.embedded import redact_url, stop_embedded_redis
from scraper.envelope import Envelope, EnvelopeError
from scraper.names import BadName, check_run
from scraper.queue import FleetQueue, QueueError, check_spider_name, known_spiders
from scraper.seeding import seed_run
from scraper.worker_process import SHUTDOWN_CLOSE_WAIT, run_worker

__all__ = ["EXIT_ARGS", "EXIT_CONFIG", "EXIT_DLQ", "EXIT_INCOMPLETE", "EXIT_INFRA", "app", "main"]

app = typer.Typer(
    help="Fleet: a Scrapy worker fleet fed from one leased Redis queue. "
    "Nothing lost when a worker dies, nothing written twice when a request is retried.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
breakers_app = typer.Typer(
    help="Drift breakers per (spider, domain): list them, or reset one after a fix.",
    invoke_without_command=True,
)



def _emitted(rows: list[dict[str, Any]], as_json: bool, empty: str) -> bool:
    """JSON for scripts, or a one-line explanation when there is nothing to tabulate."""
    if as_json:
        print(json.dumps(rows))
        return True
    if not rows:
        out.print(empty)
        return True
    return False


def _spider_arg(value: Any) -> Any:
    """Typer callback for SPIDER arguments: a name that cannot be a queue name is a usage error (exit
    2) here, not a traceback or an empty export later."""
    for name in value if isinstance(value, list) else [value]:
        if name is not None:
            try:
                check_spider_name(name)
            except QueueError as exc:
                raise typer.BadParameter(str(exc)) from None
    return value


def _run_arg(value: Any) -> Any:
    """Typer callback for --run: a run id becomes part of Redis and object keys, so one that cannot is
    a usage error (exit 2) where it enters, not a bad key later."""
    if value is not None:
        try:
            check_run(value)
        except BadName as exc:
            raise typer.BadParameter(str(exc)) from None
    return value




@app.command()
def seed(
    spider: Annotated[str, typer.Argument(callback=_spider_arg, help="Spider name (see `fleet spiders`).")],
    url: Annotated[Optional[list[str]], typer.Option("--url", help="A URL to enqueue; repeatable.")] = None,
    urls: Annotated[Optional[str], typer.Option("--urls", help="File with one URL a line, or - for stdin.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", callback=_run_arg, help="Run id; default: a UTC timestamp.")] = None,
    callback: Annotated[Optional[str], typer.Option(
        help="Spider method that parses these URLs (default: parse), e.g. parse_product.")] = None,
) -> None:
    """Enqueue requests for SPIDER; without --url/--urls, the spider's own start requests.

    A URL already enqueued in the same run is skipped (SEEN). Prints JSON {run, enqueued, skipped}.
    A URL Fleet would not fetch (a scheme FLEET_SCHEMES does not allow, no host, malformed, a line that
    is not UTF-8) is rejected with one line on stderr; the others are still enqueued, the JSON then has
    "rejected": N and the exit code is 2.
    """
    cfg = load_config()
    spidercls = spider_class(spider, cfg)
    if callback is not None and not callable(getattr(spidercls, callback, None)):
        raise fail(f"spider {spider!r} has no method {callback!r} to use as --callback")
    if callback is not None and not (url or urls):
        raise fail("--callback applies to --url/--urls; the spider's start requests name their own callbacks")
    run_id = run or default_run()
    try:
        result = asyncio.run(seed_run(cfg, spidercls, run_id, list(url or []), urls, callback))
    except QueueError as exc:
        raise fail(str(exc)) from None
    print(json.dumps(result))
    if result.get("rejected"):
        raise typer.Exit(EXIT_ARGS)



@app.command()
def worker(
    spider: Annotated[str, typer.Argument(callback=_spider_arg, help="Spider name.")],
    concurrency: Annotated[Optional[int], typer.Option(help="Concurrent requests (default FLEET_CONCURRENCY, 32).")] = None,
    until_idle: Annotated[Optional[float], typer.Option(
        "--until-idle", help="Exit 0 once READY, IN-FLIGHT and DELAYED of SPIDER stayed empty this many seconds.")] = None,
) -> None:
    """Run one worker: lease, fetch, classify, write, acknowledge; until a signal or --until-idle."""
    raise typer.Exit(run_worker(spider, concurrency, until_idle))



@app.command("run")
def run_cmd(
    spider: Annotated[str, typer.Argument(callback=_spider_arg, help="Spider name.")],
    urls: Annotated[Optional[str], typer.Option("--urls", help="File of URLs (or -); default: the spider's start requests.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 1,
    run: Annotated[Optional[str], typer.Option("--run", callback=_run_arg, help="Run id; default: a UTC timestamp.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="RUN", callback=_run_arg,
        help="Drain the existing run RUN without seeding (after `fleet breakers reset`, or a run cut by --deadline).")] = None,
    deadline: Annotated[Optional[float], typer.Option(
        "--deadline", metavar="SECONDS",
        help="Stop the workers gracefully after this long (their leases go back to READY) and exit 5.")] = None,
    idle: Annotated[float, typer.Option("--idle", help="Seconds the queue must stay empty before workers exit.")] = 2.0,
) -> None:
    """Cron one-shot: seed (or --resume a run), work until the queue drains, print a JSON summary.

    Exit 0 when the run drained with nothing parked and no breaker open; 5 incomplete (requests parked,
    a breaker open, work left, or --deadline passed); 4 drained but some requests ended in the DLQ;
    3 infrastructure failure; 2 drained, but some input URLs were rejected (see `fleet seed`);
    1 configuration error.
    """
    cfg = load_config()
    if workers < 1:
        raise fail("--workers must be >= 1")
    if deadline is not None and deadline <= 0:
        raise fail("--deadline must be > 0 seconds")
    if resume is not None and (run is not None or urls is not None):
        raise fail("--resume RUN drains an existing run: it takes neither --run nor --urls")
    spidercls = spider_class(spider, cfg)
    started = time.time()
    if resume is not None:
        run_id = resume
        known = asyncio.run(run_summary(cfg, spider, run_id))
        if not known["known"]:
            raise fail(f"spider {spider!r} has no run {run_id!r} to resume (see fleet status {spider})")
        seeded = {"enqueued": 0, "skipped": 0, "rejected": 0}
    else:
        run_id = run or default_run()
        seeded = asyncio.run(seed_run(cfg, spidercls, run_id, [], urls))
    runlog = log.get_logger(component="run")
    runlog.info("run_started", spider=spider, run=run_id, resumed=resume is not None, seeded=seeded["enqueued"],
                skipped=seeded["skipped"], workers=workers, deadline_s=deadline)
    env = dict(os.environ)
    env["FLEET_REDIS_URL"] = redis_url_for(cfg)
    cmd = [sys.executable, "-m", "scraper.cli", "worker", spider, "--until-idle", str(idle)]
    deadline_at = None if deadline is None else time.monotonic() + deadline
    with tempfile.TemporaryDirectory(prefix="fleet-run-") as tmp:
        stats_files = [Path(tmp) / f"worker-{i}.json" for i in range(workers)]
        envs = [{**env, runreport.STATS_ENV: str(f)} for f in stats_files]
        if progress.enabled(cfg.log_format):
            codes, cut = _run_workers_with_progress(cmd, envs, env["FLEET_REDIS_URL"], spider, run_id,
                                                    cfg.log_level, deadline_at)
        else:
            procs = [subprocess.Popen(cmd, env=e) for e in envs]
            codes, cut = _wait_workers(procs, deadline_at)
        worker_stats = runreport.merge_worker_stats(stats_files)
    summary = asyncio.run(run_summary(cfg, spider, run_id))
    result = runreport.summarize(
        spider=spider, run=run_id, resumed=resume is not None, seeded=seeded["enqueued"],
        skipped=seeded["skipped"], rejected=seeded.get("rejected", 0), seen=summary["run"]["seen"], done=summary["run"]["done"],
        dlq=summary["dlq_run"], queue=summary["counts"], breakers=summary["breakers"], workers=worker_stats,
        worker_codes=codes, deadline_passed=cut, elapsed_s=time.time() - started, store=cfg.store,
    )
    code, why = runreport.exit_code(result)
    runlog.info("run_finished", exit_code=code, **{k: v for k, v in result.items() if k != "store"})
    print(json.dumps(result))
    if code:
        err.print(f"[bold red]error:[/] {why}" if code == EXIT_INFRA else f"[bold yellow]fleet run:[/] {why}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(code)


def _wait_workers(procs: list[subprocess.Popen[bytes]], deadline_at: float | None) -> tuple[list[int], bool]:
    """Wait for the workers; past ``deadline_at`` (monotonic) send each a SIGTERM once (graceful: they
    stop leasing, finish within FLEET_SHUTDOWN_GRACE and release the rest to READY). Returns the exit
    codes and whether the deadline cut the run."""
    import signal as _signal

    cut = False
    kill_at: float | None = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if deadline_at is not None and not cut and now >= deadline_at:
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
        time.sleep(0.1)
    # a worker our own SIGTERM ended before it had installed its handlers (still starting up) held no
    # lease; one we had to SIGKILL left its leases to expire (the run is incomplete either way)
    ours = (-_signal.SIGTERM, -_signal.SIGKILL)
    codes = [0 if cut and p.returncode in ours else int(p.returncode) for p in procs]
    return codes, cut


def _run_workers_with_progress(
    cmd: list[str], envs: list[dict[str, str]], url: str, spider: str, run: str, level: str,
    deadline_at: float | None,
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
            codes, cut = _wait_workers(procs, deadline_at)
        except KeyboardInterrupt:
            # Ctrl-C reached the workers too (one process group): they stop gracefully, releasing their
            # leases, and their last lines must still find the pipe open. A second Ctrl-C aborts.
            codes, cut = [p.wait() for p in procs], False
        bar.drain()
    return codes, cut


async def _status(cfg: FleetConfig, spider: str | None) -> dict[str, Any]:
    client = await connect(redis_url_for(cfg))
    try:
        names = [spider] if spider else await known_spiders(client)
        result: dict[str, Any] = {}
        for name in names:
            q = FleetQueue(client, name)
            counts = await q.counts()
            brk = await q.breakers()
            result[name] = {**counts, "runs": await q.runs(),
                            "breakers": {d: {"state": b["state"], "parked": b["parked"]} for d, b in brk.items()}}
        return result
    finally:
        await client.aclose()


@app.command()
def status(
    spider: Annotated[Optional[str], typer.Argument(callback=_spider_arg, help="Only this spider.")] = None,
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


@app.command()
def spiders(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the spiders Fleet can run: Python (SPIDER_MODULES + FLEET_SPIDER_MODULES) and YAML specs
    (FLEET_SPIDERS_DIR; the format is documented in scraper/yamlspec.py and the README). Exits 1 if a
    spec in FLEET_SPIDERS_DIR is invalid, after listing the valid ones."""
    cfg = load_config()
    settings = base_settings(cfg)
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


@app.command("dlq")
def dlq_cmd(
    spider: Annotated[str, typer.Argument(callback=_spider_arg, help="Spider name.")],
    action: Annotated[str, typer.Argument(help="list (default) or requeue.")] = "list",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (list).")] = False,
    limit: Annotated[int, typer.Option(help="Newest entries to show (list).")] = 100,
    reason: Annotated[Optional[str], typer.Option(help="requeue: only entries whose reason starts with this.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="requeue: every entry.")] = False,
) -> None:
    """Dead-lettered requests of SPIDER: `list` them (newest first) or `requeue` them with fresh budgets."""
    if action == "list":
        dlq_list(spider, as_json, limit)
    elif action == "requeue":
        dlq_requeue(spider, reason, all_)
    else:
        raise fail(f"unknown dlq action {action!r}: use list or requeue")


def dlq_list(spider: str, as_json: bool, limit: int) -> None:
    cfg = load_config()

    async def go() -> list[dict[str, Any]]:
        client = await connect(redis_url_for(cfg))
        try:
            q = FleetQueue(client, spider)
            rows = []
            async for sid, f in q.dlq_iter():
                f.pop("envelope", None)
                rows.append({"id": sid, **f})
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


def dlq_requeue(spider: str, reason: str | None, all_: bool) -> None:
    """Put dead-lettered requests back in READY with fresh budgets (history is kept)."""
    if not reason and not all_:
        raise fail("say which entries: --reason REASON or --all")
    cfg = load_config()

    async def go() -> dict[str, int]:
        client = await connect(redis_url_for(cfg))
        try:
            q = FleetQueue(client, spider)
            skipped = 0
            ids: list[str] = []
            envs: list[Envelope] = []
            async for sid, f in q.dlq_iter():
                if reason and not f.get("reason", "").startswith(reason):
                    continue
                try:
                    env = Envelope.loads(f.get("envelope", ""))
                except EnvelopeError:
                    skipped += 1
                    continue
                env.history.append({"requeued_from": f.get("reason"), "at": time.time()})
                env.attempts, env.lost = {}, 0
                env.dont_filter = True  # SEEN already holds it; requeue must bypass
                envs.append(env)
                ids.append(sid)
            requeued = await q.requeue(envs)
            if ids:
                await client.xdel(q.keys.dlq, *ids)
            return {"requeued": requeued, "skipped": skipped}
        finally:
            await client.aclose()

    print(json.dumps(asyncio.run(go())))




async def _breakers(cfg: FleetConfig, spider: str | None) -> dict[str, dict[str, Any]]:
    client = await connect(redis_url_for(cfg))
    try:
        names = [spider] if spider else await known_spiders(client)
        return {n: await FleetQueue(client, n).breakers() for n in names}
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
    spider: Annotated[Optional[str], typer.Argument(callback=_spider_arg, help="Only this spider.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Breakers with state, C counts, opened_at, parked backlog and sample evidence."""
    _breakers_list(spider, as_json)


def _breakers_list(spider: str | None, as_json: bool) -> None:
    cfg = load_config()
    data = asyncio.run(_breakers(cfg, spider))
    rows = [{"spider": sp, "domain": d, **info} for sp, doms in data.items() for d, info in doms.items()]
    if _emitted(rows, as_json, "no breakers yet (they appear when a spider that declares required_fields drifts)"):
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


@breakers_app.command("reset")
def breakers_reset(
    spider: Annotated[str, typer.Argument(callback=_spider_arg)],
    domain: Annotated[str, typer.Argument(help="Target host, e.g. shop.example.com")],
) -> None:
    """Close a breaker and release its parked requests to READY (after the spider was fixed)."""
    cfg = load_config()

    async def go() -> int:
        client = await connect(redis_url_for(cfg))
        try:
            return await FleetQueue(client, spider).breaker_reset(domain.lower())
        finally:
            await client.aclose()

    released = asyncio.run(go())
    print(json.dumps({"spider": spider, "domain": domain.lower(), "state": "closed", "released": released,
                      "next": f"running workers take the released requests; with none running (cron), "
                              f"fleet run {spider} --resume RUN finishes the run"}))


app.add_typer(breakers_app, name="breakers")


@app.command()
def replay(
    spider: Annotated[str, typer.Argument(callback=_spider_arg, help="Spider name.")],
    url: Annotated[Optional[str], typer.Option("--url", help="The page's URL (its stored snapshot is used).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="A raw/, items/ or evidence/ key of the page.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", callback=_run_arg, help="Run of the snapshot (default: newest that has it).")] = None,
    callback: Annotated[Optional[str], typer.Option(help="Callback to run (default: from the evidence, else parse).")] = None,
) -> None:
    """Re-run extraction offline on a stored snapshot; exit 0 when the required fields are there, 1 when
    drift persists. Check a selector fix against the very page that drifted, then reset the breaker."""
    from scraper.replay import ReplayError, run_replay

    if bool(url) == bool(key):
        raise fail("give exactly one of --url URL or --key KEY")
    cfg = load_config()
    spidercls = spider_class(spider, cfg)
    try:
        report = run_replay(cfg, spidercls, url=url, key=key, run=run, callback=callback,
                            runs_lookup=lambda: asyncio.run(_runs(cfg, spider)))
    except ReplayError as exc:
        raise fail(str(exc)) from None
    print(json.dumps(report, indent=2, default=str))
    raise typer.Exit(0 if report["ok"] else 1)


async def _runs(cfg: FleetConfig, spider: str) -> list[str]:
    client = await connect(redis_url_for(cfg))
    try:
        q = FleetQueue(client, spider)
        runs: Any = await client.zrevrange(q.keys.runs, 0, -1)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in runs]
    finally:
        await client.aclose()


@app.command()
def export(
    spider: Annotated[str, typer.Argument(callback=_spider_arg, help="Spider name.")],
    run: Annotated[str, typer.Option("--run", callback=_run_arg, help="The run to export.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    out: Annotated[Optional[str], typer.Option("--out", help="Store URI to write to (default: FLEET_STORE, under exports/).")] = None,
) -> None:
    """Export a run as one record per idempotency key (Parquet for DuckDB/Athena/pandas, or JSONL)."""
    from scraper.export import export_run

    if fmt not in {"parquet", "jsonl"}:
        raise fail(f"--format {fmt!r}: use parquet or jsonl")
    cfg = load_config()
    try:
        with progress.ExportProgress(spider, run, show=progress.enabled(cfg.log_format)) as bar:
            result = export_run(cfg.store, spider, run, fmt, out, bar)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if result["records"] == 0:
        err.print(f"[yellow]warning:[/] run {run!r} of {spider!r} has no items in {cfg.store}", highlight=False)
    print(json.dumps(result))


@app.command()
def proxies(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Proxy health per target domain (ids only: credentials are never shown)."""
    from scraper.proxies import ProxyConfigError, parse_proxies, proxy_report

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
    if _emitted(rows, as_json, "no proxies configured (FLEET_PROXIES); requests go direct"):
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
    spider: Annotated[Optional[list[str]], typer.Argument(callback=_spider_arg, help="Only these spiders (default: every seeded one).")] = None,
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

    from scraper.metrics import BacklogCollector

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
    stopped = stop_embedded_redis()
    print(json.dumps({"stopped": stopped}))


@app.command()
def smoke() -> None:
    """End-to-end idempotency smoke test against the configured Redis and store (embedded by default).

    Kills workers between object write and ack, and between DONE and ack, and checks that the retry
    neither doubles the object nor refetches a finished page; then a 1,000-request burst. Prints a
    JSON report; exit 0 when every check passed, 1 with the reason otherwise.
    """
    from scraper.smoke import run_smoke

    cfg = load_config()
    url = redis_url_for(cfg)
    asyncio.run(check_reachable(url))
    code, report = run_smoke(url, cfg)
    print(json.dumps(report, indent=2))
    raise typer.Exit(code)


@app.command()
def demo(
    products: Annotated[int, typer.Option(help="Products on the bundled demo site.")] = 200,
    concurrency: Annotated[int, typer.Option()] = 16,
) -> None:
    """The main job on embedded defaults: a local demo shop, seeded, crawled until idle, summarized."""
    from scraper.demo import run_demo

    raise typer.Exit(run_demo(products=products, concurrency=concurrency))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Helpers to drive the real `fleet` CLI as subprocesses, the way cron and operators do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from scraper.queue.keys import LEASED

ROOT = Path(__file__).resolve().parent.parent


def fleet_env(redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLEET_REDIS_URL=redis_url,
        FLEET_STORE=f"file://{tmp / 'data'}",
        FLEET_HOME=str(tmp / "home"),
        FLEET_LOG_LEVEL="INFO",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def spider_module_env(redis_url: str, tmp: Path, module: str, source: str, **extra: str) -> dict[str, str]:
    """``fleet_env`` for a user spider module written from ``source`` (dedented) into ``tmp/pkg/<module>.py``
    and named in FLEET_SPIDER_MODULES, the way a user puts their spiders on PYTHONPATH."""
    import textwrap

    mod_dir = tmp / "pkg"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / f"{module}.py").write_text(textwrap.dedent(source))
    env = fleet_env(redis_url, tmp, FLEET_SPIDER_MODULES=module, **extra)
    env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
    return env


def fleet(
    *args: str, env: dict[str, str], timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scraper.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout, input=stdin, cwd=env.get("FLEET_CWD"),
    )


def fleet_json(*args: str, env: dict[str, str], timeout: float = 120) -> Any:
    res = fleet(*args, env=env, timeout=timeout)
    assert res.returncode == 0, f"fleet {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return json.loads(res.stdout)


def start_worker(spider: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``fleet worker SPIDER`` in the background, run from FLEET_CWD when set (a Scrapy project's directory)."""
    fh = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "scraper.cli", "worker", spider, *extra],
        env=env, stdout=fh, stderr=fh, cwd=env.get("FLEET_CWD"),
    )


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"worker {p.pid} did not finish within {timeout}s") from None
    return codes


def objects(data: Path, kind: str, spider: str, run: str) -> dict[str, list[dict[str, Any]]]:
    """items/… objects of a run: key → parsed JSON lines (raw/ gives key → [] )."""
    base = data / kind / f"spider={spider}" / f"run={run}"
    out: dict[str, list[dict[str, Any]]] = {}
    if not base.exists():
        return out
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.name.startswith(".fleet-tmp"):
            key = str(p.relative_to(data))
            out[key] = [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if kind == "items" else []
    return out


def wait_for(pred: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def counts(redis_url: str, spider: str) -> dict[str, int]:
    c = redis.Redis.from_url(redis_url)
    p = f"fleet:{{{spider}}}:"
    try:
        return {
            "ready": int(c.zcard(p + "ready")), "inflight": int(c.zcount(p + "inflight", *LEASED)),  # not LEASE's encoding mark
            "delayed": int(c.zcard(p + "delayed")), "dlq": int(c.xlen(p + "dlq")),
        }
    finally:
        c.close()


def queue_session(redis_url: str, spider: str, body: Any) -> Any:
    """``await body(FleetQueue(client, spider), client)`` on a fresh asyncio client, closed afterwards."""
    import asyncio

    import redis.asyncio as aioredis

    from scraper.queue.client import FleetQueue

    async def main() -> Any:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
        try:
            return await body(FleetQueue(client, spider), client)
        finally:
            await client.aclose()

    return asyncio.run(main())

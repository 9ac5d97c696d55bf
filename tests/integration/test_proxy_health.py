"""A proxy that accepts connections and never answers must not take the traffic (found by a hostile probe).

It had no latency, so it stayed "untried" and cheaper than every working proxy, and no answer is class A
(the target may be what fails), never a ban: one such proxy beside a healthy one sent 20 of 20 requests to
the DLQ, every attempt through it. Now a failure without an answer counts as a very slow answer in the
proxy's latency, and a retry goes through another proxy than the attempts that failed.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests import loopback
from tests.fleetproc import fleet, fleet_json, objects, spider_module_env
from tests.hostile import ForwardProxy

pytestmark = pytest.mark.integration

SPIDER = '''
import scrapy

class Proxied(scrapy.Spider):
    name = "proxied"

    def parse(self, response):
        yield {"url": response.url}
'''


class _Closer:
    """Accepts a connection, reads what comes, closes it without a byte of answer; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(2)
            try:
                conn.recv(65536)
            except OSError:
                pass
            conn.close()

    def stop(self) -> None:
        self.sock.close()



def test_a_proxy_that_never_answers_loses_the_traffic(redis_url: str, tmp_path: Path) -> None:
    closer = _Closer()
    good = ForwardProxy("good").start()
    try:
        with loopback.serving(loopback.OkPages) as base:
            env = spider_module_env(redis_url, tmp_path, "proxied_spiders", SPIDER,
                                    FLEET_PROXIES=f"http://127.0.0.1:{closer.port},{good.url}",
                                    FLEET_RETRY_BASE="0.2", FLEET_RETRY_CAP="1", FLEET_CONCURRENCY="4")
            urls = tmp_path / "urls.txt"
            urls.write_text("".join(f"{base}/p/{i}\n" for i in range(20)))
            res = fleet("run", "proxied", "--urls", str(urls), "--run", "r1", env=env, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert len(objects(tmp_path / "data", "items", "proxied", "r1")) == 20
        assert fleet_json("dlq", "proxied", "list", "--json", env=env) == []
        # the first requests find it out (about one per concurrent slot); the rest go to the healthy one
        assert closer.connections <= 8, closer.connections
        assert good.forwarded >= 20  # every page came through the proxy that answers
    finally:
        closer.stop()
        good.stop()

"""``fleet smoke``: the end-to-end idempotency smoke test, against the configured Redis and store.

It proves the two crash windows of the commit order (object → DONE → ack) with real processes:

(a) a worker SIGKILLed after the object write, before the ack: the retry, delivered to a second
    worker once the (short, test-only) lease expires, overwrites the same single object with the
    same items; ``_meta`` names the second worker and attempt 2.
(b) a worker SIGKILLed after DONE, before the ack: the second worker acknowledges the redelivery
    without fetching the page again.
(c) a burst of 1,000 requests dispatched in under a second is processed exactly once.

The smoke test owns the ``fleet_smoke`` queue: it clears that spider's queue before it starts.
"""

from __future__ import annotations

import asyncio
import collections
import html
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis.asyncio as aioredis
from scrapy import Request

from scraper.infra.config import FleetConfig
from scraper.queue import redisio
from scraper.queue.client import FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.keys import LEASED
from scraper.store.backends import ObjectStore, open_store
from scraper.store.objects import items_key

__all__ = ["SmokeFailure", "SmokeSite", "run_smoke"]

SPIDER = "fleet_smoke"
LEASE = "1.5"


class SmokeSite:
    """Any path is a page whose content is derived from the path alone (refetches are identical)."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with lock:
                    site.hits[self.path] += 1
                token = html.escape(self.path)
                body = (
                    f"<html><head><title>smoke {token}</title></head><body>"
                    f"<h1 class='token'>{token}</h1><p class='stamp'>{token[::-1]}</p></body></html>"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # a 1,000-request burst must not overflow the listen backlog

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmokeFailure(AssertionError):
    pass


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise SmokeFailure(what)


class Smoke:
    def __init__(self, redis_url: str, config: FleetConfig) -> None:
        self.redis_url = redis_url
        self.config = config
        self.store: ObjectStore = open_store(config.store)
        self.site = SmokeSite()
        self.stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.tag = f"{self.stamp}-{secrets.token_hex(3)}"
        self.logs: list[str] = []

    # -- plumbing ---------------------------------------------------------------------------------

    async def _q(self) -> tuple[aioredis.Redis, FleetQueue]:
        client = redisio.client(self.redis_url)
        return client, FleetQueue(client, SPIDER, dedup_ttl=self.config.dedup_ttl)

    async def _purge(self) -> None:
        client, q = await self._q()
        await q.purge()
        await client.aclose()

    async def _seed(self, run: str, urls: list[str]) -> tuple[int, float]:
        client, q = await self._q()
        envs = [Envelope.from_request(Request(u), spider_name=SPIDER, run=run) for u in urls]
        t0 = time.perf_counter()
        enq, _ = await q.seed(run, envs)
        took = time.perf_counter() - t0
        await client.aclose()
        return enq, took

    async def _inflight(self) -> int:
        client, q = await self._q()
        n = int(await client.zcount(q.keys.inflight, *LEASED))
        await client.aclose()
        return n

    async def _done(self, run: str, fps: list[str]) -> list[bool]:
        client, q = await self._q()
        res = await q.has_member(q.keys.done(run), fps)
        await client.aclose()
        return res

    def _worker(self, name: str, *args: str, crash_at: str = "", timeout: float = 90) -> tuple[int, str]:
        env = dict(os.environ)
        env.update(
            FLEET_REDIS_URL=self.redis_url,
            FLEET_LEASE_SECONDS=LEASE,
            FLEET_WORKER_ID=name,
            FLEET_LOG_LEVEL="INFO",
            FLEET_TEST_CRASH_AT=crash_at,
        )
        proc = subprocess.run(
            [sys.executable, "-m", "scraper.cli", "worker", SPIDER, *args],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        self.logs.append(proc.stderr)
        return proc.returncode, proc.stderr

    def _items(self, run: str, fp: str) -> list[dict[str, Any]]:
        data = self.store.get(items_key(SPIDER, run, fp))
        return [json.loads(x) for x in data.decode().splitlines() if x.strip()]

    def _objects(self, run: str) -> list[str]:
        return list(self.store.list(f"items/spider={SPIDER}/run={run}/"))

    @staticmethod
    def _strip(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in it.items() if k != "_meta"} for it in items]

    # -- the three checks -------------------------------------------------------------------------

    def crash_after_write(self) -> dict[str, Any]:
        run = f"smoke-a-{self.tag}"
        url = f"{self.site.base}/smoke/{self.tag}/a.html"
        fp = Envelope.from_request(Request(url), spider_name=SPIDER, run=run).fp
        asyncio.run(self._seed(run, [url]))
        code, _ = self._worker("smoke-w1", "--until-idle", "30", crash_at="after_write")
        _check(code == -9, f"(a) worker 1 should die by SIGKILL after the write, exit was {code}")
        first = self._items(run, fp)
        _check(asyncio.run(self._inflight()) == 1, "(a) the killed worker's lease must still be in flight")
        code, _ = self._worker("smoke-w2", "--until-idle", "2")
        _check(code == 0, f"(a) worker 2 exited {code}")
        second = self._items(run, fp)
        objs = self._objects(run)
        _check(len(objs) == 1, f"(a) expected exactly one object, found {len(objs)}")
        _check(self._strip(first) == self._strip(second), "(a) retried items differ from worker 1's")
        m1, m2 = first[0]["_meta"], second[0]["_meta"]
        _check(m1["worker_id"] == "smoke-w1" and m1["attempt"] == 1, f"(a) worker 1 _meta wrong: {m1}")
        _check(m2["worker_id"] == "smoke-w2" and m2["attempt"] == 2, f"(a) worker 2 _meta wrong: {m2}")
        _check(m1["idempotency_key"] == m2["idempotency_key"], "(a) idempotency keys differ")
        _check(self.site.hits[f"/smoke/{self.tag}/a.html"] == 2, "(a) page should be fetched twice")
        return {"object": objs[0], "attempts": [m1["attempt"], m2["attempt"]],
                "workers": [m1["worker_id"], m2["worker_id"]]}

    def crash_after_done(self) -> dict[str, Any]:
        run = f"smoke-b-{self.tag}"
        path = f"/smoke/{self.tag}/b.html"
        url = self.site.base + path
        fp = Envelope.from_request(Request(url), spider_name=SPIDER, run=run).fp
        asyncio.run(self._seed(run, [url]))
        code, _ = self._worker("smoke-w1", "--until-idle", "30", crash_at="after_done")
        _check(code == -9, f"(b) worker 1 should die by SIGKILL after DONE, exit was {code}")
        _check(asyncio.run(self._done(run, [fp])) == [True], "(b) DONE must be recorded before the kill")
        _check(asyncio.run(self._inflight()) == 1, "(b) the lease must still be in flight (no ack)")
        code, log = self._worker("smoke-w2", "--until-idle", "2")
        _check(code == 0, f"(b) worker 2 exited {code}")
        _check(self.site.hits[path] == 1, f"(b) worker 2 refetched the page ({self.site.hits[path]} fetches)")
        _check("request_skipped_done" in log, "(b) worker 2 did not log request_skipped_done")
        _check(len(self._objects(run)) == 1, "(b) expected exactly one object")
        _check(asyncio.run(self._inflight()) == 0, "(b) lease should be acknowledged")
        return {"fetches": self.site.hits[path], "skipped_done": True}

    def burst(self, n: int = 1000) -> dict[str, Any]:
        run = f"smoke-c-{self.tag}"
        urls = [f"{self.site.base}/smoke/{self.tag}/burst/{i}.html" for i in range(n)]
        enq, took = asyncio.run(self._seed(run, urls))
        _check(enq == n, f"(c) enqueued {enq} of {n}")
        _check(took < 1.0, f"(c) dispatching {n} requests took {took:.2f}s (must be < 1 s)")
        procs = []
        logs = [tempfile.TemporaryFile() for _ in (1, 2)]  # files, not pipes: a full pipe stalls a worker
        for i, fh in zip((1, 2), logs, strict=True):
            env = dict(os.environ, FLEET_REDIS_URL=self.redis_url, FLEET_WORKER_ID=f"smoke-burst-{i}")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "scraper.cli", "worker", SPIDER, "--until-idle", "2"],
                env=env, stdout=subprocess.DEVNULL, stderr=fh,
            ))
        codes = [p.wait(timeout=300) for p in procs]
        for fh in logs:
            fh.seek(0)
            self.logs.append(fh.read().decode("utf-8", "replace"))
            fh.close()
        _check(codes == [0, 0], f"(c) burst workers exited {codes}")
        objs = self._objects(run)
        _check(len(objs) == n, f"(c) expected {n} objects, found {len(objs)}")
        fetched = [self.site.hits[f"/smoke/{self.tag}/burst/{i}.html"] for i in range(n)]
        _check(all(f == 1 for f in fetched), f"(c) {sum(f != 1 for f in fetched)} pages not fetched exactly once")
        return {"requests": n, "dispatch_s": round(took, 3), "objects": len(objs)}


def run_smoke(redis_url: str, config: FleetConfig) -> tuple[int, dict[str, Any]]:
    t0 = time.time()
    smoke = Smoke(redis_url, config)
    report: dict[str, Any] = {"ok": False, "store": config.store, "tag": smoke.tag}
    try:
        asyncio.run(smoke._purge())
        report["crash_after_write"] = smoke.crash_after_write()
        report["crash_after_done"] = smoke.crash_after_done()
        report["burst"] = smoke.burst()
        report["ok"] = True
    except SmokeFailure as exc:
        report["error"] = str(exc)
        report["worker_log_tail"] = (smoke.logs[-1] if smoke.logs else "")[-2000:]
    except subprocess.TimeoutExpired as exc:
        report["error"] = f"a worker did not finish in time: {exc}"
    finally:
        smoke.site.stop()
    report["elapsed_s"] = round(time.time() - t0, 2)
    return (0 if report["ok"] else 1), report

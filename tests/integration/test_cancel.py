"""`fleet cancel SPIDER --run RUN` against a real redis-server and a real worker process.

What it proves: the mark stops the run in every queue script (LEASE drops, COMMIT queues no children and
records no DONE, NACK forgets, DEAD writes no DLQ entry) while other runs go on; the sweep removes and
counts the run's READY, DELAYED and PARKED entries; a worker holding leases of the run when it is
cancelled drops them without writing an object, leaving nothing IN-FLIGHT and nothing in the DLQ."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis
from scrapy import Request

from scraper.queue import redisio
from scraper.queue.cancel import cancel_run
from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from tests import loopback
from tests.fleetproc import counts, fleet, fleet_env, fleet_json, objects, start_worker, wait_all, wait_for

pytestmark = pytest.mark.integration

SPIDER = "demo_shop"
DOMAIN = "shop.example"


def _env(path: str, run: str) -> Envelope:
    return Envelope.from_request(Request(f"https://{DOMAIN}/{path}"), spider_name=SPIDER, run=run)


def test_cancel_stops_the_run_in_every_script_and_sweeps_its_queue(redis_url: str) -> None:
    async def main() -> None:
        client = redisio.client(redis_url, socket_timeout=10)
        try:
            q = FleetQueue(client, SPIDER)
            assert await q.seed("bad", [_env(f"b{i}", "bad") for i in range(10)]) == (10, 0)
            assert await q.seed("good", [_env(f"g{i}", "good") for i in range(3)]) == (3, 0)
            held = (await q.lease(13, worker="w1", lease_seconds=60)).leased
            bad = [x for x in held if Envelope.loads(x.raw).run == "bad"]
            good = [x for x in held if Envelope.loads(x.raw).run == "good"]
            assert len(bad) == 10 and len(good) == 3
            # before the cancel: one of "bad" waits in DELAYED, one is parked, two go back to READY
            assert await q.nack(bad[0].id, bad[0].token, Envelope.loads(bad[0].raw), time.time() + 600)
            await q.drift(bad[1].id, bad[1].token, DOMAIN, {"why": "test"}, "bad")
            assert await q.release([(x.id, x.token) for x in bad[2:4]]) == 2

            report = await cancel_run(client, SPIDER, "bad")
            assert report["removed"] == {"ready": 2, "delayed": 1, "parked": 1}, report
            assert report["total_removed"] == 4 and report["inflight"] == 6 and not report["already_cancelled"]
            again = await cancel_run(client, SPIDER, "bad")  # harmless, nothing left to sweep
            assert again["already_cancelled"] and again["total_removed"] == 0

            # a leased "bad" request finishing now: no child queued, no DONE, but acknowledged
            reply = await q.commit_claiming(
                [Commit(bad[4].id, bad[4].token, "bad", Envelope.loads(bad[4].raw).fp, [_env("child", "bad")],
                        claim=1)], worker="w1", lease_seconds=60)
            assert reply.acked == [True] and reply.enqueued == [0] and reply.claims == [("", 0)]
            assert await client.hget(q.keys.done("bad"), "count") is None
            # a failure of a "bad" request: no retry and no DLQ entry, the entry is forgotten
            assert await q.nack(bad[5].id, bad[5].token, Envelope.loads(bad[5].raw), time.time()) is True
            assert await q.dead(bad[6].id, bad[6].token, {"reason": "x", "run": "bad"}) is False  # forgotten
            assert await client.xlen(q.keys.dlq) == 0
            # a "bad" lease that expires comes back to READY and is dropped by the next LEASE, unexecuted
            assert await q.release([(bad[7].id, bad[7].token)]) == 1
            lb = await q.lease(10, worker="w2", lease_seconds=60)
            assert lb.cancelled == 1 and lb.leased == []
            # the other run is untouched: its commit records DONE and queues its children
            reply = await q.commit_claiming(
                [Commit(good[0].id, good[0].token, "good", Envelope.loads(good[0].raw).fp,
                        [_env("gchild", "good")])])
            assert reply.acked == [True] and reply.enqueued == [1]
            assert int(await client.hget(q.keys.done("good"), "count")) == 1
            c = await q.counts()
            assert c == {"ready": 1, "inflight": 2 + 2, "delayed": 0, "dlq": 0, "parked": 0}, c
            # a class C outcome of a "bad" request after the cancel: forgotten, not parked, no breaker record
            assert await q.drift(bad[8].id, bad[8].token, DOMAIN, {"why": "test"}, "bad") == ("cancelled", "")
            assert await client.zcard(q.keys.parked(DOMAIN)) == 0
            # what is left in flight: bad[9] (its worker drops it) and good[1], good[2]
            assert await client.hlen(q.keys.env) == 1 + 3
        finally:
            await client.aclose()

    asyncio.run(main())


def test_cli_cancel_reports_counts_and_refuses_unknown_runs(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path)
    args = ["seed", SPIDER, "--run", "r1"]
    for i in range(3):
        args += ["--url", f"http://127.0.0.1:9/x{i}"]
    assert fleet_json(*args, env=env)["enqueued"] == 3
    report = fleet_json("cancel", SPIDER, "--run", "r1", env=env)
    assert report["removed"] == {"ready": 3, "delayed": 0, "parked": 0}
    assert report["spider"] == SPIDER and report["run"] == "r1" and report["done"] == 0
    assert counts(redis_url, SPIDER)["ready"] == 0
    # a cancelled run takes no new work: seeding it and resuming it are refused in one line (exit 2)
    for cmd in (args, ["run", SPIDER, "--resume", "r1"]):
        res = fleet(*cmd, env=env)
        assert res.returncode == 2 and "was cancelled" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    res = fleet("cancel", SPIDER, "--run", "nope", env=env)
    assert res.returncode == 2 and res.stdout == ""
    assert "has no run 'nope'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert fleet("cancel", SPIDER, "--run", "../x", env=env).returncode == 2
    assert fleet("cancel", SPIDER, env=env).returncode == 2  # --run is required


class _Gate:
    """A loopback site whose pages answer only once the test opens the gate (each links 3 products)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.waiting = 0
        gate = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.waiting += 1
                gate.open.wait(30)
                body = "".join(f'<article class="product"><a href="{self.path}/p{i}">p</a></article>'
                               for i in range(3)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = loopback.serve(H, daemon_threads=True)
        self.url = loopback.base_url(self.server)


@pytest.fixture
def gate() -> Iterator[_Gate]:
    g = _Gate()
    try:
        yield g
    finally:
        g.open.set()
        loopback.stop(g.server)


def test_a_worker_holding_leases_of_a_cancelled_run_drops_them_unwritten(
        redis_url: str, tmp_path: Path, gate: _Gate) -> None:
    env = fleet_env(redis_url, tmp_path, FLEET_CONCURRENCY="2", FLEET_PREFETCH="4", FLEET_LOG_FORMAT="json")
    args = ["seed", SPIDER, "--run", "bad"]
    for i in range(10):
        args += ["--url", f"{gate.url}/list{i}"]
    assert fleet_json(*args, env=env)["enqueued"] == 10
    log = tmp_path / "worker.log"
    proc = start_worker(SPIDER, env, log)
    try:
        # two fetches wait at the site, a few more leases sit in the worker's buffer
        assert wait_for(lambda: gate.waiting >= 2 and counts(redis_url, SPIDER)["inflight"] >= 4, 60), \
            log.read_text()[-3000:]
        report = fleet_json("cancel", SPIDER, "--run", "bad", env=env)
        assert report["inflight"] >= 4 and report["removed"]["ready"] + report["inflight"] == 10, report
        assert wait_for(lambda: '"run_cancelled"' in log.read_text(), 10), log.read_text()[-3000:]
        gate.open.set()  # the fetches held at the site now answer: too late, the run is cancelled
        assert wait_for(lambda: counts(redis_url, SPIDER) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0},
                        30), (counts(redis_url, SPIDER), log.read_text()[-3000:])
        time.sleep(0.5)  # nothing written late either
        data = tmp_path / "data"
        assert objects(data, "raw", SPIDER, "bad") == {} and objects(data, "items", SPIDER, "bad") == {}
        r = redis.Redis.from_url(redis_url)
        try:
            assert r.hlen(f"fleet:{{{SPIDER}}}:env") == 0  # no children queued, no envelope left
            assert r.hget(f"fleet:{{{SPIDER}}}:done:bad", "count") is None
        finally:
            r.close()
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        dropped = [e for e in events if e.get("event") == "request_cancelled"]
        assert len(dropped) == report["inflight"], [e.get("event") for e in events]
        assert not [e for e in events if e.get("event") in ("object_written", "request_dead", "request_acked")]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_all([proc], 40) == [0], log.read_text()[-3000:]


def test_dlq_requeue_keeps_a_cancelled_runs_entries(redis_url: str, tmp_path: Path) -> None:
    """`fleet dlq requeue` put a cancelled run's entries back in READY, where LEASE dropped them unfetched, and
    deleted them from the DLQ (the only copy of their envelope and evidence) while reporting them requeued."""

    async def dead_letters() -> None:
        client = redisio.client(redis_url)
        q = FleetQueue(client, SPIDER)
        try:
            for run in ("c1", "c2", "c3"):
                await q.seed(run, [_env(f"gone-{run}", run)])
                batch = await q.lease(1, worker="w", lease_seconds=60)
                (lease,) = batch.leased
                fields = {"reason": "http:404", "url": f"https://{DOMAIN}/gone-{run}", "envelope": lease.raw.decode()}
                assert await q.dead(lease.id, lease.token, fields)
        finally:
            await client.aclose()

    asyncio.run(dead_letters())
    env = fleet_env(redis_url, tmp_path)
    fleet_json("cancel", SPIDER, "--run", "c1", env=env)
    out = fleet_json("dlq", SPIDER, "requeue", "--all", "--run", "c2", env=env)
    assert out == {"requeued": 1, "skipped": 0, "cancelled_kept": 0}, out
    out = fleet_json("dlq", SPIDER, "requeue", "--all", env=env)
    assert out == {"requeued": 1, "skipped": 0, "cancelled_kept": 1}, out  # c3 requeued, c1 kept
    left = fleet_json("dlq", SPIDER, "list", "--json", env=env)
    assert len(left) == 1 and "gone-c1" in left[0]["url"], left

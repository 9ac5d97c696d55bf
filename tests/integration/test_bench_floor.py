"""The floor scripts of ``python -m tests.bench.costs --floor`` (issue #18) do the work they stand for: a
lease hands out READY's entries and moves them to IN-FLIGHT, a commit records DONE, queues each new child
once (not one already SEEN) and acknowledges only the leases it holds. A floor that skipped a write would
understate what Fleet's scripts cost over it; the instruction counts themselves need valgrind (the bench)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from scraper.queue.client import Commit
from scraper.queue.keys import new_id
from scraper.queue.seenset import buckets
from tests.bench.costs import RUN, FloorQueue, _env

pytestmark = [pytest.mark.integration]


def test_floor_scripts_lease_commit_and_dedupe(redis_url: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        q = FloorQueue(client)
        k = q.keys
        await q.seed(RUN, [_env(f"s/{i}") for i in range(5)])
        batch = await q.lease(3, worker="w", lease_seconds=60)
        assert len(batch.leased) == 3
        assert await client.zcard(k.ready) == 2 and await client.zcard(k.inflight) == 3
        kids = [_env("k/1"), _env("k/1"), _env("k/2")]  # the second is the first again: SEEN by then
        commits = [Commit(lease.id, lease.token, RUN, _env(f"s/{i}").fp, [kid], ids=[new_id(kid.fp)])
                   for i, (lease, kid) in enumerate(zip(batch.leased, kids, strict=True))]
        commits[2].token = "not-mine"  # a lease this commit does not hold: nothing of it is written
        await q.commit(commits)
        assert await client.zcard(k.inflight) == 1  # two acknowledged
        assert await client.zcard(k.ready) == 3  # two seeds left and one child (k/1 once)
        assert await client.hlen(k.env) == 3 + 1  # those three and the unacknowledged lease's envelope
        done = await buckets(client, f"{k.prefix}done:{RUN}")
        seen = await buckets(client, f"{k.prefix}seen:{RUN}")
        assert sum(len(v) for v in done.values()) == 2 * 7 and sum(len(v) for v in seen.values()) == 7
        await client.aclose()

    asyncio.run(go())

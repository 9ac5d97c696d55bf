"""Leasing from a spider in shards (scraper/queue/shardlease.py) when a shard misbehaves or belongs to an
earlier count: work left in the shards of an earlier count is worked off while the shards of now have work,
a failing shard is waited for once and reported once per outage, an unsharded spider stays a FleetQueue.
(Found by the third review of the shards change; its reproductions, kept as regression tests.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from scraper.queue.client import FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.keys import shard_of
from scraper.queue.shards import ShardedQueue, open_queue
from tests.integration.test_shards import RUN, _env, _with, hang_lease

pytestmark = pytest.mark.integration


def test_a_hanging_old_count_shard_is_waited_for_once(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: Any) -> None:
        q = ShardedQueue(client, "lg", 2, older=[3])
        assert len(q.read_parts) > 2
        await q.seed(RUN, [_env("lg", f"s{i}") for i in range(100)])  # ~50 a shard: every ask of 80 is short
        errors = hang_lease(monkeypatch, q, q.read_parts[2])  # the old count's shard 2 of 3
        slow = 0
        got = 0
        for _ in range(4):
            t = time.monotonic()
            b = await q.lease(80, worker="w", lease_seconds=60)
            got += len(b.leased)
            await q.release([(x.id, x.token) for x in b.leased])
            slow += time.monotonic() - t >= 0.5
        assert slow <= 1, f"{slow} of 4 lease calls waited for the failing old-count shard"
        assert errors == [2]  # reported once

    _with(redis_url, body)


def test_a_failing_old_count_shard_fails_every_idle_lease(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Current shards empty: each lease raises (the feeder's outage clock runs) although the shards work goes to answer."""
    async def body(client: Any) -> None:
        q = ShardedQueue(client, "lg2", 2, older=[3])

        async def fail(*_a: Any, **_k: Any) -> Any:
            raise TimeoutError("primary not answering")

        monkeypatch.setattr(q.read_parts[2], "lease", fail)
        raised = 0
        for _ in range(4):
            try:
                await q.lease(10, worker="w", lease_seconds=60)
            except TimeoutError:
                raised += 1
        assert raised == 4

    _with(redis_url, body)


def test_old_count_work_is_leased_while_the_current_shards_have_work(redis_url: str) -> None:
    async def body(client: Any) -> None:
        old = ShardedQueue(client, "ls", 3)
        envs = [_env("ls", f"p{i}") for i in range(400)]
        left = next(e for e in envs if shard_of(e.fp, 3) == 2)  # in shard 2 of 3: an old-count shard for q
        assert await old.seed(RUN, [left]) == (1, 0)
        q = ShardedQueue(client, "ls", 2, older=[3])
        assert len(q.read_parts) == 3
        await q.seed(RUN, [e for e in envs if e is not left])
        calls, got = 0, set()
        t = time.monotonic()
        while time.monotonic() - t < 6.0 and calls < 40:  # longer than LEGACY_EMPTY_SECONDS
            b = await q.lease(8, worker="w", lease_seconds=60)
            calls += 1
            got |= {x.id for x in b.leased}
            await q.ack([(x.id, x.token) for x in b.leased])
            if left.fp in {Envelope.loads(x.raw).fp for x in b.leased}:
                break  # the old-count shard's entry: worked off while the current shards had work
            await asyncio.sleep(0.15)
        legacy_ready = await q.read_parts[2].counts()
        assert legacy_ready["ready"] == 0, "the old-count shard was never asked while the current ones had work"

    _with(redis_url, body)


def test_a_failing_shard_is_reported_once(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: Any) -> None:
        q = ShardedQueue(client, "ro", 3)
        await q.seed(RUN, [_env("ro", f"s{i}") for i in range(3000)])
        errors: list[int] = []
        q.on_shard_error = lambda s, e: errors.append(s)

        async def fail(*_a: Any, **_k: Any) -> Any:
            raise ConnectionError("primary down")

        monkeypatch.setattr(q.parts[1], "lease", fail)
        t = time.monotonic()
        while time.monotonic() - t < 5.0:
            b = await q.lease(10, worker="w", lease_seconds=60)
            assert b.leased
            await asyncio.sleep(0.1)
        assert errors == [1]

    _with(redis_url, body)


def test_an_unset_count_is_a_fleetqueue_and_a_count_back_to_1_still_reads_the_old_shards(redis_url: str) -> None:
    async def body(client: Any) -> None:
        q = await open_queue(client, "plain", shards=1)
        assert type(q) is FleetQueue
        assert await client.exists("fleet:{plain}:shards", "fleet:{plain}:shardsets") == 0
        b = await q.lease(5, worker="w", lease_seconds=60)
        assert b.remaining == 0 and await client.zscore(q.keys.waiting, "w") is not None
        # once sharded and back to 1: a ShardedQueue of one shard that also leases the old shards
        await open_queue(client, "back", shards=3)
        q2 = await open_queue(client, "back", shards=1)
        assert isinstance(q2, ShardedQueue) and (q2.n, len(q2.read_parts)) == (1, 3)

    _with(redis_url, body)


def test_a_failing_old_count_shard_does_not_stop_the_keepers_beat(redis_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """MAINTAIN runs in the shards of earlier counts too: one of them failing must not cost the beat its gate
    tick (permits renewed, waiting reported), nor count as a Redis outage while the others answer."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from tests.unit.test_core_keeper_gate import gate_ticks

    out: dict[str, int] = {}

    async def body(client: Any) -> None:
        q = ShardedQueue(client, "r4", 2, older=[3])

        async def down(*_a: Any, **_k: Any) -> Any:
            raise RedisConnectionError("primary of the old-count shard down")

        monkeypatch.setattr(q.read_parts[-1], "maintain", down)
        troubles: list[str] = []

        async def trouble(exc: BaseException) -> None:
            troubles.append(type(exc).__name__)

        out.update(ticks=await gate_ticks(q, 1.5, trouble), troubles=len(troubles))

    _with(redis_url, body)
    assert out["ticks"] > 3 and out["troubles"] == 0, out

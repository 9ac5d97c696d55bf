"""The keeper ticks the politeness gate every beat and checks the shard count on its own clock (a move of
the count check once left the gate tick under it: permits were never renewed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from scraper.worker.keeper import Keeper


class _Q:
    def __init__(self) -> None:
        self.gets = 0

    async def heartbeat(self, leases: Any, s: float) -> list[str]:
        return []

    async def maintain(self, limit: int = 500) -> tuple[int, list[Any]]:
        return 0, []

    async def shards_changed(self) -> None:
        self.gets += 1
        return None


class _Gate:
    ticks = 0

    async def tick(self) -> None:
        self.ticks += 1


async def gate_ticks(queue: Any, seconds: float,
                     redis_trouble: Callable[[BaseException], Awaitable[None]] | None = None) -> int:
    """Run a keeper with beats every 0.1 s (lease 0.3 s) over ``queue`` for ``seconds``; how often it ticked
    the gate. ``redis_trouble`` stands for Health's (a keeper that hits a Redis error calls it)."""
    flags = SimpleNamespace(releasing=False)
    feeder = SimpleNamespace(last_beat=0.0, idle_since=None)
    ledger = SimpleNamespace(leases=lambda: [], holds=lambda _l: False)
    health = SimpleNamespace(redis_ok=lambda: None, config_fatal=lambda _r: None, redis_trouble=redis_trouble)
    k = Keeper(ledger, health, flags, feeder, lease_seconds=0.3, until_idle=None,  # type: ignore[arg-type]
               stats=None, log=None, kick=lambda: None, committing=lambda: False)
    k.queue = queue
    gate = _Gate()
    k.gate = gate  # type: ignore[assignment]
    task = asyncio.create_task(k.run())
    await asyncio.sleep(seconds)
    flags.releasing = True
    await task
    return gate.ticks


def test_gate_ticks_every_beat() -> None:
    q = _Q()
    ticks = asyncio.run(gate_ticks(q, 1.0))
    assert q.gets > 3
    assert ticks > 3, f"gate.tick ran {ticks} times in 1 s of beats every 0.1 s"

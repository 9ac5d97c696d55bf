"""GATE / UNGATE against the real redis-server (issue #17): GCRA spacing and burst, the fleet-wide
in-flight limit, permit expiry (a dead worker's permits come back), renewal, and the AIMD window's bounds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from scraper.queue import redisio
from scraper.queue.client import FleetQueue

pytestmark = pytest.mark.integration

D = "shop.example"


def _run(redis_url: str, body: Callable[[FleetQueue, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        client = redisio.client(redis_url, socket_timeout=10)
        try:
            await body(FleetQueue(client, "gatetest"), client)
        finally:
            await client.aclose()

    asyncio.run(main())


def _gate(q: FleetQueue, ids: list[str], **kw: Any) -> Any:
    args: dict[str, Any] = {"limit": 0, "spacing": 0.0, "burst": 1, "aimd": False, "start": 1.0, "wmax": 8,
                            "ttl": 30.0}
    args.update(kw)
    return q.gate(D, ids, **args)


def test_gcra_spacing_is_strict_with_burst_one(redis_url: str) -> None:
    async def body(q: FleetQueue, _c: Any) -> None:
        first = await _gate(q, ["a", "b"], spacing=0.2)
        assert first.granted == 1  # one now, the next one spacing later
        assert 150 <= first.retry_ms <= 201
        again = await _gate(q, ["b"], spacing=0.2)
        assert again.granted == 0 and again.retry_ms > 100
        await asyncio.sleep(again.retry_ms / 1000 + 0.01)
        assert (await _gate(q, ["b"], spacing=0.2)).granted == 1

    _run(redis_url, body)


def test_gcra_burst_allows_that_many_at_once_then_spaces(redis_url: str) -> None:
    async def body(q: FleetQueue, _c: Any) -> None:
        r = await _gate(q, [f"x{i}" for i in range(6)], spacing=0.5, burst=3)
        assert r.granted == 3
        assert 400 <= r.retry_ms <= 501  # the 4th waits one spacing

    _run(redis_url, body)


def test_inflight_limit_and_release(redis_url: str) -> None:
    async def body(q: FleetQueue, _c: Any) -> None:
        r = await _gate(q, ["a", "b", "c"], limit=2)
        assert (r.granted, r.inflight, r.limit) == (2, 2, 2)
        assert 20 <= r.retry_ms <= 250
        assert (await _gate(q, ["c"], limit=2)).granted == 0
        assert await q.ungate([(D, "a", 5, "ok")], 30.0) == 1
        assert (await _gate(q, ["c"], limit=2)).granted == 1
        doms = await q.domains()
        assert doms[0]["domain"] == D and doms[0]["inflight"] == 2 and doms[0]["limit"] == 2

    _run(redis_url, body)


def test_permits_expire_unless_renewed(redis_url: str) -> None:
    async def body(q: FleetQueue, _c: Any) -> None:
        assert (await _gate(q, ["dead", "alive"], limit=2, ttl=0.3)).granted == 2
        await asyncio.sleep(0.2)
        await q.ungate([(D, "alive", 0, "renew")], 0.6)  # only the live worker renews
        await asyncio.sleep(0.2)
        r = await _gate(q, ["n1", "n2"], limit=2)
        assert r.granted == 1  # the dead worker's permit came back, the renewed one is still held
        assert r.inflight == 2

    _run(redis_url, body)


def test_aimd_window_grows_halves_and_stays_bounded(redis_url: str) -> None:
    async def body(q: FleetQueue, c: Any) -> None:
        key = q.keys.gstate(D)
        r = await _gate(q, ["s"], aimd=True, start=2.0, wmax=4)
        assert r.window == 2.0 and r.limit == 2
        for i in range(40):  # successes under target: +1/window each, up to wmax
            await q.ungate([(D, f"s{i}", 10, "ok")], 30.0)
        assert float(await c.hget(key, "win")) == 4.0
        assert (await _gate(q, ["t"], aimd=True, start=2.0, wmax=4)).limit == 4
        await q.ungate([(D, "t", 10, "bad")], 30.0)
        assert float(await c.hget(key, "win")) == 2.0
        await q.ungate([(D, "t", 10, "bad")], 30.0)  # the same latency period: one signal
        assert float(await c.hget(key, "win")) == 2.0
        for _ in range(4):
            await asyncio.sleep(0.11)
            await q.ungate([(D, "t", 10, "bad")], 30.0)
        assert float(await c.hget(key, "win")) == 1.0  # never below 1
        await q.ungate([(D, "t", 5000, "ok")], 30.0)  # over target (2 x best + 100 ms): no increase
        assert float(await c.hget(key, "win")) == 1.0
        # an old limit above a lowered bound is clamped at the next GATE
        await c.hset(key, "win", 50)
        assert (await _gate(q, ["u"], aimd=True, start=2.0, wmax=3)).window == 3.0

    _run(redis_url, body)


def test_waiting_reports_are_summed_and_stale_ones_ignored(redis_url: str) -> None:
    async def body(q: FleetQueue, c: Any) -> None:
        await _gate(q, ["a"], limit=1)
        await q.report_waiting("w1", {D: 3})
        await q.report_waiting("w2", {D: 2})
        await c.hset(q.keys.gwait, "w3", json.dumps({"t": time.time() - 600, "d": {D: 50}}))
        await c.hset(q.keys.gwait, "w4", "not json")
        assert (await q.domains())[0]["waiting"] == 5
        await q.report_waiting("w1", {})
        assert (await q.domains())[0]["waiting"] == 2

    _run(redis_url, body)

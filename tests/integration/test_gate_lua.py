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
from scraper.queue.gating import DOMAIN_TTL, WAITING_FRESH, WAITING_STALE

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


async def _redis_now(c: Any) -> float:
    sec, usec = await c.time()
    return float(sec) + float(usec) / 1e6


def test_a_domain_not_gated_for_the_state_ttl_leaves_the_index(redis_url: str) -> None:
    """GATE scores the index `gdz` by Redis's clock; a member as old as DOMAIN_TTL (its state expired) is
    removed by a later GATE of any domain, at most 100 a call, and the index expires with the last state."""
    async def body(q: FleetQueue, c: Any) -> None:
        now = await _redis_now(c)
        # what GATE wrote for domains last gated a day ago (their gd: state expired meanwhile), and one recent
        await c.zadd(q.keys.gdz, {f"old{i}.example": now - DOMAIN_TTL - 1 - i for i in range(150)})
        await c.zadd(q.keys.gdz, {"recent.example": now - 3600})
        assert (await _gate(q, ["a"], limit=1)).granted == 1
        assert await c.zcard(q.keys.gdz) == 52  # 100 pruned, D added: 50 old + recent + D
        assert abs(float(await c.zscore(q.keys.gdz, D)) - now) < 5
        assert 0 < await c.ttl(q.keys.gdz) <= DOMAIN_TTL
        await q.gate("other.example", ["b"], limit=1, spacing=0.0, burst=1, aimd=False, start=1.0, wmax=8,
                     ttl=30.0)
        members = {m.decode() for m in await c.zrange(q.keys.gdz, 0, -1)}
        assert members == {D, "other.example", "recent.example"}
        # a member past the TTL that GATE has not reached yet is not listed either
        await c.zadd(q.keys.gdz, {"late.example": now - DOMAIN_TTL - 1})
        await c.hset(q.keys.gstate("late.example"), "limit", 1)
        assert await q.gated_domains() == ["other.example", "recent.example", D]
        assert await q.gated_count() == 3
        assert [r["domain"] for r in await q.domains()] == ["other.example", D]  # recent.example: no state

    _run(redis_url, body)


def test_stale_waiting_reports_are_deleted(redis_url: str) -> None:
    """A killed worker never deletes its `gwait` field: `domains` deletes every field older than
    WAITING_STALE, and so does `report_waiting`, once per process per WAITING_STALE."""
    async def body(q: FleetQueue, c: Any) -> None:
        await _gate(q, ["a"], limit=1)
        t = time.time()
        await c.hset(q.keys.gwait, mapping={
            "dead": json.dumps({"t": t - WAITING_STALE - 1, "d": {D: 50}}),
            "quiet": json.dumps({"t": t - WAITING_FRESH - 30, "d": {D: 7}}),  # not counted, not deleted yet
            "live": json.dumps({"t": t, "d": {D: 2}}),
            "junk": "not json",  # not ours to judge: neither counted nor deleted
        })
        assert (await q.domains())[0]["waiting"] == 2
        assert sorted(k.decode() for k in await c.hkeys(q.keys.gwait)) == ["junk", "live", "quiet"]

        await c.hset(q.keys.gwait, "dead2", json.dumps({"t": t - WAITING_STALE - 1, "d": {D: 1}}))
        await q.report_waiting("w1", {D: 3})  # the process's first report sweeps
        fields = sorted(k.decode() for k in await c.hkeys(q.keys.gwait))
        assert fields == ["junk", "live", "quiet", "w1"]
        await c.hset(q.keys.gwait, "dead3", json.dumps({"t": t - WAITING_STALE - 1, "d": {D: 1}}))
        await q.report_waiting("w1", {D: 4})  # the next ones, within WAITING_STALE, do not
        assert await c.hexists(q.keys.gwait, "dead3")
        q._waiting_swept = time.monotonic() - WAITING_STALE  # WAITING_STALE later
        await q.report_waiting("w1", {})
        assert sorted(k.decode() for k in await c.hkeys(q.keys.gwait)) == ["junk", "live", "quiet"]

    _run(redis_url, body)


def test_an_old_gdoms_set_is_listed_then_moved_and_gate_still_works(redis_url: str) -> None:
    """A fleet upgraded in place has the SET `gdoms` (and old workers may still add to it in a rolling
    upgrade): GATE, which no longer touches it, still works beside it; `domains` / `gated_count` list its
    members whose state lives, move them into `gdz` scored by their last GATE, and remove them from the SET."""
    async def body(q: FleetQueue, c: Any) -> None:
        kw: dict[str, Any] = {"limit": 3, "spacing": 0.0, "burst": 1, "aimd": False, "start": 1.0, "wmax": 8,
                              "ttl": 30.0}
        await q.gate("old.example", ["o"], **kw)  # the state an old GATE left: the same hash, but in gdoms
        at = float(await c.hget(q.keys.gstate("old.example"), "at"))
        await c.delete(q.keys.gdz)
        await c.sadd(q.keys.gdoms, "old.example", "expired.example")  # the second one's state is gone
        r = await _gate(q, ["a", "b"], limit=2)  # no WRONGTYPE: a new key beside the old one
        assert (r.granted, r.inflight) == (2, 2)
        assert await c.type(q.keys.gdoms) == b"set"
        rows = {row["domain"]: row for row in await q.domains()}
        assert set(rows) == {D, "old.example"}
        assert rows["old.example"]["limit"] == 3 and rows["old.example"]["inflight"] == 1
        assert not await c.exists(q.keys.gdoms)
        assert float(await c.zscore(q.keys.gdz, "old.example")) == pytest.approx(at, abs=1e-3)

        # rolling upgrade: an old worker still gates (SADD; the shared state's `at` moves on), after the move too
        later = await _redis_now(c) + 5
        await c.hset(q.keys.gstate(D), "at", later)
        await c.sadd(q.keys.gdoms, D)
        await c.hset(q.keys.gstate("old2.example"), mapping={"limit": 1, "at": later})
        await c.sadd(q.keys.gdoms, "old2.example")
        assert await q.gated_count() == 3
        assert not await c.exists(q.keys.gdoms)
        assert float(await c.zscore(q.keys.gdz, D)) == pytest.approx(later, abs=1e-3)
        assert await q.gated_domains() == ["old.example", "old2.example", D]

    _run(redis_url, body)

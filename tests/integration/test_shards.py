"""A spider's queue in shards (FLEET_QUEUE_SHARDS, scraper/queue/shards.py) on a real redis-server: the same
work gives the same SEEN, DONE, queue and replies as one shard; every entry stays in its fingerprint's
shard; leases reach every shard; breakers, holds, cancel, the DLQ and the shard count behave fleet-wide.
(The same on a real 3-primary cluster, and the CLI: tests/integration/test_cluster_shards.py.)"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from scrapy import Request

from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.keys import LEASED, Keys, QueueError, shard_of
from scraper.queue.shards import ShardedQueue, open_queue, stored_shards
from scraper.queue.startfp import mark_unfiltered
from tests.integration.test_commit_batch import _commits, _plan, _reply

pytestmark = pytest.mark.integration

RUN = "r1"
DOMAIN = "shop.example"
PATHS = [f"p{i}" for i in range(14)] + ["parked"]


def _env(spider: str, path: str, run: str = RUN) -> Envelope:
    return Envelope.from_request(Request(f"https://{DOMAIN}/{path}"), spider_name=spider, run=run)


def _with(redis_url: str, body: Callable[[aioredis.Redis], Awaitable[None]]) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
        try:
            await client.flushall()
            await body(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def hang_lease(monkeypatch: pytest.MonkeyPatch, q: ShardedQueue, part: FleetQueue) -> list[int]:
    """Make ``part``'s LEASE hang 0.5 s and fail (a primary not answering); returns the shards ``q`` reports."""
    errors: list[int] = []
    q.on_shard_error = lambda s, e: errors.append(s)

    async def hang(*_a: Any, **_k: Any) -> Any:
        await asyncio.sleep(0.5)
        raise TimeoutError("primary not answering")

    monkeypatch.setattr(part, "lease", hang)
    return errors


async def _lease_all(q: FleetQueue, n: int, worker: str = "w") -> list[Any]:
    got: list[Any] = []
    for _ in range(20):
        got += (await q.lease(n - len(got), worker=worker, lease_seconds=60)).leased
        if len(got) >= n:
            break
    return got


async def _state(q: FleetQueue, client: aioredis.Redis) -> dict[str, Any]:
    """What the queue holds, over all its shards; paths, not ids (ids differ between the two queues)."""
    parts = q.parts if isinstance(q, ShardedQueue) else [q]
    spider = q.spider
    out: dict[str, Any] = {"seen": set(), "done": set(), "ready": [], "inflight": [], "env": [],
                           "seen_count": 0, "done_count": 0}
    fps = [_env(spider, p).fp for p in PATHS]
    for i, part in enumerate(parts):
        k = part.keys
        for name, key in (("seen", k.seen(RUN)), ("done", k.done(RUN))):
            has = await part.has_member(key, fps)
            out[name] |= {p for p, h in zip(PATHS, has, strict=True) if h}
            out[name + "_count"] += int(await client.hget(key, "count") or 0)
        for name, key in (("ready", k.ready), ("inflight", k.inflight)):
            for lid in await client.zrangebyscore(key, *LEASED):  # not IN-FLIGHT's encoding mark
                raw = await client.hget(k.env, lid)
                env = Envelope.loads(raw)
                assert shard_of(env.fp, len(parts)) == i == shard_of(lid.decode(), len(parts))
                out[name].append(env.url.rsplit("/", 1)[-1])
        out["env"] += [Envelope.loads(v).url.rsplit("/", 1)[-1] for v in (await client.hgetall(k.env)).values()]
    return {k: sorted(v) if isinstance(v, list) else v for k, v in out.items()}


@pytest.mark.parametrize("seed", range(10))
def test_sharded_batches_do_what_one_shard_does(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    starts = rng.sample(PATHS[:14], 6)
    pre_seen = rng.sample([p for p in PATHS[:14] if p not in starts], 3)
    plan = _plan(rng, starts)

    async def body(client: aioredis.Redis) -> None:
        qs: list[FleetQueue] = [FleetQueue(client, "one"), ShardedQueue(client, "three", 3)]
        replies = []
        for q in qs:
            await q.seed(RUN, [_env(q.spider, p) for p in starts])
            leases = {Envelope.loads(le.raw).url.rsplit("/", 1)[-1]: le for le in await _lease_all(q, len(starts))}
            assert len(leases) == len(starts)
            await q.commit([Commit("", "", RUN, "", [_env(q.spider, p) for p in pre_seen], done=False)], ack=False)
            commits = _commits(q, plan, leases)
            for c in commits:
                # as the worker sends them (scraper.worker.discovery): a dont_filter child under its own
                # fingerprint, which no DONE of an earlier commit of the batch holds; an id that ends like
                # its fingerprint (keys.new_id)
                for e in c.discovered:
                    if e.dont_filter:
                        mark_unfiltered(e)
                c.ids = [cid.ljust(12, "0") + e.fp[-4:] for cid, e in zip(c.ids, c.discovered, strict=True)]
            # the batch split in two calls, as the committer flushes: shards see each call's waves in order
            half = len(commits) // 2
            rs = [await q.commit_claiming(commits[:half], worker="w", lease_seconds=60, nonce="n"),
                  await q.commit_claiming(commits[half:], worker="w", lease_seconds=60, nonce="m")]
            # a children commit's acked flag: FleetQueue's says whether an 'h' entry's hops counted, ShardedQueue's
            # is False (records.CommitReply); the hops themselves are compared in the state below
            enq, events, acked, claims = _reply(rs)
            replies.append((enq, events, [a and c.done for a, c in zip(acked, commits, strict=True)], claims))
        assert replies[0] == replies[1]
        assert await _state(qs[0], client) == await _state(qs[1], client)

    _with(redis_url, body)


def test_seeds_split_evenly_and_leases_reach_every_shard(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "even", 3)
        n = 3000
        assert await q.seed(RUN, [_env("even", f"s{i}") for i in range(n)]) == (n, 0)
        per = [c["ready"] for c in await q.shard_counts()]
        assert sum(per) == n and max(abs(x - n / 3) for x in per) < 0.15 * n / 3, per
        # small asks rotate over the shards: no shard waits while another is drained
        seen_shards: set[int] = set()
        for _ in range(6):
            got = (await q.lease(1, worker="w", lease_seconds=60)).leased
            assert len(got) == 1
            seen_shards |= set(q.leases_of(got))
        assert seen_shards == {0, 1, 2}
        # a shard drained: the ask goes to the others in the same call
        await q.parts[1].client.delete(q.parts[1].keys.ready)
        for _ in range(6):
            assert len((await q.lease(2, worker="w", lease_seconds=60)).leased) == 2
        # everything leased and committed: nothing left anywhere, the run's counts are the sums
        rest = await _lease_all(q, 10_000)
        await q.commit([Commit(le.id, le.token, RUN, Envelope.loads(le.raw).fp) for le in rest])
        counts = await q.counts()
        assert counts["ready"] == 0, counts
        runs = await q.runs()
        assert runs[RUN]["seen"] == n and runs[RUN]["done"] == len(rest)

    _with(redis_url, body)


def test_claimed_children_and_acks_route_by_id(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "route", 3)
        await q.seed(RUN, [_env("route", "start")])
        (le,) = await _lease_all(q, 1)
        kids = [_env("route", f"k{i}") for i in range(12)]
        reply = await q.commit_claiming(
            [Commit(le.id, le.token, RUN, Envelope.loads(le.raw).fp, kids, claim=5, done=False)],
            worker="w", lease_seconds=60, nonce="n1")
        assert reply.enqueued == [12] and reply.claims[0][0]
        home = q.part(kids[4].fp)
        assert await client.zcount(home.keys.inflight, *LEASED) == 1  # the claimed child, in its own shard
        # heartbeat, ack, release, nack and dead all find their shard from the id alone
        leases = await _lease_all(q, 11)
        assert len(leases) == 11
        assert await q.heartbeat([(x.id, x.token) for x in leases], 60) == []
        assert await q.ack([(x.id, x.token) for x in leases[:4]]) == 4
        assert await q.release([(x.id, x.token) for x in leases[4:7]]) == 3
        assert await q.nack(leases[7].id, leases[7].token, Envelope.loads(leases[7].raw), time.time() + 60)
        assert await q.dead(leases[8].id, leases[8].token, {"reason": "x", "run": RUN})
        assert await q.dead(leases[9].id, leases[9].token, {"reason": "y", "run": RUN})
        counts = await q.counts()
        assert (counts["ready"], counts["delayed"], counts["dlq"]) == (3, 1, 2)
        dlq = [sid async for sid, _ in q.dlq_iter()]
        assert len(dlq) == 2 and all("/" in sid for sid in dlq)
        assert await q.dlq_delete(dlq) == 2 and (await q.counts())["dlq"] == 0
        with pytest.raises(QueueError):
            await q.dlq_delete(["7/1-0"])

    _with(redis_url, body)


def test_breaker_opened_in_one_shard_stops_the_domain_in_all(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "brk", 3)
        await q.seed(RUN, [_env("brk", f"d{i}") for i in range(60)])
        leases = await _lease_all(q, 10)
        event = ""
        for le in leases:  # C outcomes until the breaker trips (5 of them at the default rate)
            event, _ = await q.drift(le.id, le.token, DOMAIN, {"why": "fields gone"}, RUN)
            if event == "opened":
                break
        assert event == "opened"
        assert {p.keys.shard: (await p.breaker_states()).get(DOMAIN, "")[:4] for p in q.parts} == \
            {0: "open", 1: "open", 2: "open"}
        brk = (await q.breakers())[DOMAIN]
        assert brk["state"] == "open" and brk["shards"] == ["open"] * 3
        assert (await q.breaker_counts())["open"] == 1
        # nothing of the domain is leased while open: every shard parks what it finds
        batch = await q.lease(30, worker="w", lease_seconds=60)
        assert batch.leased == [] and batch.parked > 0
        parked = await q.parked()
        assert await q.breaker_reset(DOMAIN) == parked
        assert await q.breaker_states() == {} and await q.parked() == 0

    _with(redis_url, body)


def test_hold_and_cancel_are_fleet_wide(redis_url: str) -> None:
    from scraper.queue.cancel import cancel_run, is_known_run

    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "hc", 3)
        until = await q.hold(DOMAIN, base=30.0, cap=60.0, rnd=1.0)
        assert until > time.time() + 20
        assert [await client.hget(p.keys.hold, DOMAIN) for p in q.parts].count(None) == 0
        await q.seed("r2", [_env("hc", f"c{i}", run="r2") for i in range(30)])
        held = 0
        for _ in range(5):
            batch = await q.lease(30, worker="w", lease_seconds=60)
            assert batch.leased == []  # held in every shard: all delayed
            held += batch.held
        assert held == 30
        await client.set(Keys("hc").shards, "3")  # as open_queue records it
        assert await is_known_run(client, Keys("hc"), "r2")
        report = await cancel_run(client, "hc", "r2")
        assert report["removed"]["delayed"] == 30, report
        assert [await client.hexists(p.keys.cancelled, "r2") for p in q.parts] == [True] * 3

    _with(redis_url, body)


def test_the_shard_count_is_recorded_and_guarded(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = await open_queue(client, "cnt", shards=3)
        assert isinstance(q, ShardedQueue) and await stored_shards(client, "cnt") == 3
        assert isinstance(await open_queue(client, "cnt"), ShardedQueue)  # operator commands read it
        await q.seed(RUN, [_env("cnt", "a"), _env("cnt", "b")])
        with pytest.raises(QueueError, match="in 3 shard"):
            await open_queue(client, "cnt", shards=2)
        with pytest.raises(QueueError, match="1 to 64"):
            await open_queue(client, "cnt", shards=65)
        for le in await _lease_all(q, 2):
            await q.commit([Commit(le.id, le.token, RUN, Envelope.loads(le.raw).fp)])
        with pytest.raises(QueueError, match="1 worker"):  # empty, but "w" waits for work: it keeps 3 shards
            await open_queue(client, "cnt", shards=1)
        await q.unwait("w")  # as a stopping worker does
        one = await open_queue(client, "cnt", shards=1)  # empty, no worker: the count may change
        assert await stored_shards(client, "cnt") == 1 and not await client.exists(Keys("cnt").shards)
        # one shard for work; the 3 of before still read (a changed count hides nothing: the next test)
        assert isinstance(one, ShardedQueue) and (one.n, len(one.read_parts)) == (1, 3)
        assert type(await open_queue(client, "new", shards=1)) is FleetQueue  # never sharded: as before

    _with(redis_url, body)


def test_a_changed_count_still_shows_what_the_old_shards_hold(redis_url: str) -> None:
    """3 shards, then 2, then 1: DLQ entries, SEEN/DONE counts and runs of the earlier shards stay readable,
    and a DLQ entry there is requeued into the current shards."""

    async def body(client: aioredis.Redis) -> None:
        q3 = await open_queue(client, "chg", shards=3)
        await q3.seed(RUN, [_env("chg", f"c{i}") for i in range(30)])
        leases = await _lease_all(q3, 30)
        for le in leases[:6]:
            assert await q3.dead(le.id, le.token, {"reason": "http:404", "run": RUN, "envelope": le.raw.decode()})
        await q3.commit([Commit(le.id, le.token, RUN, Envelope.loads(le.raw).fp) for le in leases[6:]])
        await q3.unwait("w")
        before = (await q3.runs())[RUN], len([x async for x in q3.dlq_iter()])
        assert before == ({"seen": 30, "done": 24}, 6)
        for n in (2, 1):
            q = await open_queue(client, "chg", shards=n)
            assert isinstance(q, ShardedQueue) and q.n == n
            assert ((await q.runs())[RUN], (await q.counts())["dlq"]) == before
            assert (await open_queue(client, "chg")).n == n  # operator commands: the same view
        ids = [sid async for sid, _ in q.dlq_iter()]
        envs = [Envelope.loads(f["envelope"]) async for _, f in q.dlq_iter()]
        for e in envs:
            e.dont_filter = True
        assert await q.requeue(envs) == 6 and await q.dlq_delete(ids) == 6
        counts = await q.counts()
        assert (counts["dlq"], counts["ready"]) == (0, 6)
        assert await client.zcard(Keys("chg").ready) == 6  # into the current (one) shard

    _with(redis_url, body)


def test_an_entry_outside_its_ids_shard_is_worked_where_it_is(redis_url: str) -> None:
    """A process with another count put an entry in shard 0 whose id names another shard: the sharded
    worker that leases it from shard 0 heartbeats, commits and acks it there (never stuck in flight)."""

    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "odd", 3)
        envs = [_env("odd", f"o{i}") for i in range(12)]
        stray = [e for e in envs if shard_of(e.fp, 3) != 0]
        assert await FleetQueue(client, "odd").seed(RUN, stray) == (len(stray), 0)  # all in shard 0
        leases = await _lease_all(q, len(stray))
        assert len(leases) == len(stray) and {q.shard(x.id) for x in leases} == {0}
        assert await q.heartbeat([(x.id, x.token) for x in leases], 60) == []
        reply = await q.commit_claiming([Commit(x.id, x.token, RUN, Envelope.loads(x.raw).fp) for x in leases])
        assert all(reply.acked) and (await q.counts())["inflight"] == 0
        assert q._route == {}  # settled: forgotten

    _with(redis_url, body)


def test_a_failing_shard_does_not_cost_the_others_leases(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "sick", 3)
        await q.seed(RUN, [_env("sick", f"s{i}") for i in range(60)])

        async def down(*_a: Any, **_k: Any) -> Any:
            raise ConnectionError("primary down")

        monkeypatch.setattr(q.parts[1], "lease", down)
        got = []
        for _ in range(3):  # each turn of the rotation, shard 1 first once: the others still lease
            got += (await q.lease(10, worker="w", lease_seconds=60)).leased
        assert got and {q.shard(x.id) for x in got} <= {0, 2}
        assert (await q.counts())["inflight"] == len(got)  # every lease granted was handed out
        monkeypatch.setattr(q.parts[0], "lease", down)
        monkeypatch.setattr(q.parts[2], "lease", down)
        with pytest.raises(ConnectionError):
            await q.lease(10, worker="w", lease_seconds=60)

    _with(redis_url, body)


def test_a_count_changed_under_a_worker_is_noticed(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        one, three = FleetQueue(client, "moved"), ShardedQueue(client, "moved", 3)
        assert await one.shards_changed() is None
        await client.set(Keys("moved").shards, "3")
        assert await three.shards_changed() is None
        assert "in 3 shard(s), this worker in 1" in (await one.shards_changed() or "")

    _with(redis_url, body)


def test_an_open_shards_old_window_does_not_reopen_a_recovered_one(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "win", 2)
        await q.seed(RUN, [_env("win", f"w{i}") for i in range(40)])
        # shard 0 open on its own window of 5 C; shard 1 recovered (closed, empty window)
        await client.hset(q.parts[0].keys.breaker(DOMAIN), mapping={"state": "open", "window": "CCCCC"})
        await client.hset(q.parts[0].keys.brk, DOMAIN, "open|9e9")
        le = next(x for x in await _lease_all(q, 40) if q.shard(x.id) == 1)
        event, _ = await q.drift(le.id, le.token, DOMAIN, {"why": "one C"}, RUN)
        assert event == "" and await q.parts[1].breaker_states() == {}

    _with(redis_url, body)


def test_a_share_of_zero_lists_the_worker_waiting_where_it_is_empty(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "wz", 3)
        got = await q.lease(1, worker="w", lease_seconds=60)  # one shard asked for 1, the others for 1 and 0
        assert got.remaining == 0 and not got.leased
        assert [await client.zscore(p.keys.waiting, "w") is not None for p in q.parts] == [True] * 3

    _with(redis_url, body)


def test_work_a_worker_of_an_old_count_left_is_worked_off(redis_url: str) -> None:
    """A worker opened with 3 shards, not yet leasing (so not waiting), misses a change to 2 and commits
    children by the old count: the 2-shard workers lease them from the old shards too, and the spider
    drains (until-idle ends), no child lost."""

    async def body(client: aioredis.Redis) -> None:
        a = await open_queue(client, "st", shards=3)
        b = await open_queue(client, "st", shards=2)
        envs = [_env("st", f"p{i}") for i in range(200)]
        parent = next(e for e in envs if shard_of(e.fp, 6) == 0)  # shard 0 under both counts
        kids = [e for e in envs if e is not parent and shard_of(e.fp, 3) != 0][:10]
        assert await b.seed(RUN, [parent]) == (1, 0)
        (x,) = await _lease_all(a, 1, worker="A")
        reply = await a.commit_claiming([Commit(x.id, x.token, RUN, parent.fp, kids)])
        assert all(reply.acked) and sum(reply.enqueued) == len(kids)
        assert await a.shards_changed()  # what its keeper notices at its next tick: it stops
        got = await _lease_all(b, len(kids), worker="B")
        assert sorted(Envelope.loads(y.raw).fp for y in got) == sorted(e.fp for e in kids)
        reply = await b.commit_claiming([Commit(y.id, y.token, RUN, Envelope.loads(y.raw).fp) for y in got])
        assert all(reply.acked) and await b.pending() == 0

    _with(redis_url, body)


def test_processes_with_the_same_new_count_all_start(redis_url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        qs = await asyncio.gather(*(open_queue(client, "twin", shards=3) for _ in range(4)))
        assert all(isinstance(q, ShardedQueue) and q.n == 3 for q in qs)
        await client.set(Keys("odd0").shards, "03")  # however it is written, 3 is 3
        assert (await open_queue(client, "odd0", shards=3)).n == 3

    _with(redis_url, body)


def test_a_hanging_shard_is_asked_last_for_a_while(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(client: aioredis.Redis) -> None:
        q = ShardedQueue(client, "slow", 3)
        await q.seed(RUN, [_env("slow", f"s{i}") for i in range(600)])
        errors = hang_lease(monkeypatch, q, q.parts[1])
        slow = 0
        for _ in range(6):
            t = time.monotonic()
            assert (await q.lease(50, worker="w", lease_seconds=60)).leased
            slow += time.monotonic() - t >= 0.5
        assert slow == 1 and errors == [1]  # waited for once, reported once

    _with(redis_url, body)

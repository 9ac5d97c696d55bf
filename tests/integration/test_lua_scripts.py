"""Every .lua script against the real redis-server: it compiles (SCRIPT LOAD gives the loader's SHA), every
call site passes exactly the KEYS and ARGV its header names (recorded while each FleetQueue and ProxyPool
method runs once), and a flushed script cache costs a reload, never a lost call (EVALSHA falls back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from scrapy import Request

from scraper.queue import client as queue
from scraper.queue import redisio
from scraper.queue import scripts as lua
from scraper.queue.cancel import cancel_run
from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.shards import ShardedQueue, open_queue
from scraper.queue.startkeys import StartStage
from scraper.worker.proxies import PROXY_KEY_PREFIX, ProxyPool, parse_proxies

pytestmark = pytest.mark.integration

SPIDER = "luatest"
RUN = "r1"
SOURCE_KEY = f"{SPIDER}:start_urls"  # a scrapy-redis start key (STAGE_STARTS)
DOMAIN = "shop.example"


def _env(path: str, *, run: str = RUN) -> Envelope:
    return Envelope.from_request(Request(f"https://{DOMAIN}/{path}"), spider_name=SPIDER, run=run)


@pytest.mark.parametrize("name", lua.names())
def test_script_compiles_on_redis(redis_url: str, name: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        s = lua.load(name)
        assert client.script_load(s.source) == s.sha
    finally:
        client.close()


def _expected_key(q: FleetQueue, name: str, value: str, test_key: str) -> bool:
    k = q.keys
    if name in ("seen", "done"):
        return value in (k.seen(RUN), k.done(RUN), k.seen("r2"), k.done("r2")) and f":{name}:" in value
    if name in ("breaker", "parked"):
        return value == (k.breaker(DOMAIN) if name == "breaker" else k.parked(DOMAIN))
    if name in ("permits", "gstate"):
        return bool(value == getattr(k, name)(DOMAIN))
    if name == "health":
        return value.startswith(PROXY_KEY_PREFIX) and value.endswith(":" + DOMAIN)
    if name == "set":
        return value == test_key
    if name == "queued":  # CANCEL's swept set
        return value in (k.ready, k.delayed, k.parked(DOMAIN))
    if name == "source":
        return value == SOURCE_KEY
    if name == "staging":
        return value == k.staging("w1")
    return bool(value == getattr(k, name))


def _expected_arg(q: FleetQueue, name: str, value: Any) -> bool:
    v = value.decode() if isinstance(value, bytes) else str(value)
    checks = {
        "prefix": lambda: v == q.keys.prefix,
        "now": lambda: abs(float(v) - time.time()) < 60,
        "run": lambda: v in (RUN, "r2"),
        "domain": lambda: v == DOMAIN,
        "worker": lambda: v in ("w1", ""),
        "ttl": lambda: v == str(q.dedup_ttl),
        "deadline": lambda: float(v) > time.time(),
        "token": lambda: "#" in v or v == "",
    }
    return checks.get(name, lambda: True)()


def _check_call(q: FleetQueue, meta: lua.ScriptMeta, keys: list[Any], args: list[Any], test_key: str) -> None:
    meta.check(len(keys), len(args))
    fixed = list(zip(meta.keys, keys, strict=False))
    each = [(meta.keys_each[i % len(meta.keys_each)], key)
            for i, key in enumerate(keys[len(meta.keys):])] if meta.keys_each else []
    for name, key in fixed + each:
        assert _expected_key(q, name, key.decode() if isinstance(key, bytes) else key, test_key), \
            (meta.name, name, key)
    for name, arg in zip(meta.argv, args, strict=False):
        assert _expected_arg(q, name, arg), (meta.name, name, arg)
    if meta.argv_each and not meta.argv_nested:
        for i, arg in enumerate(args[len(meta.argv):]):
            name = meta.argv_each[i % len(meta.argv_each)]
            assert _expected_arg(q, name, arg), (meta.name, name, arg)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[lua.ScriptMeta, list[Any], list[Any]]]]:
    """Every script call of the test: (header, KEYS, ARGV), through Bound and SEED_BULK's EVALSHA."""
    calls: list[tuple[lua.ScriptMeta, list[Any], list[Any]]] = []
    real_call = lua.Bound.__call__

    def spy(self: lua.Bound, keys: Any, args: Any) -> Any:
        calls.append((self.meta, list(keys), list(args)))
        return real_call(self, keys, args)

    def record_bulk(script: list[str]) -> None:
        assert script[0] == "EVALSHA" and script[1] == lua.load("seed_bulk").sha
        n = int(script[2])
        calls.append((lua.load("seed_bulk").meta, script[3:3 + n], script[3 + n:]))

    real_batch = FleetQueue._seed_batch

    async def batch(self: FleetQueue, hset: list[str], script: list[str]) -> int:
        record_bulk(script)
        return await real_batch(self, hset, script)

    real_send = queue.SeedStream.send

    async def send(self: Any, commands: Any) -> None:
        record_bulk(list(commands[2]))
        await real_send(self, commands)

    monkeypatch.setattr(lua.Bound, "__call__", spy)
    monkeypatch.setattr(FleetQueue, "_seed_batch", batch)
    monkeypatch.setattr(queue.SeedStream, "send", send)
    yield calls


def test_every_call_site_matches_its_header(redis_url: str, recorded: list[Any]) -> None:
    test_key = f"fleet:{{{SPIDER}}}:done:{RUN}"

    async def main() -> None:
        client = redisio.client(redis_url, socket_timeout=10)
        try:
            await open_queue(client, SPIDER, shards=2)  # SHARDS_SET: recorded, and back while still empty
            await open_queue(client, SPIDER, shards=1)
            q = FleetQueue(client, SPIDER)
            assert await q.seed(RUN, [_env(f"a{i}") for i in range(5)]) == (5, 0)  # one batch
            assert await q.seed(RUN, [_env(f"b{i}") for i in range(25)], batch=10) == (25, 0)  # streamed
            rq = _env("rq")
            rq.dont_filter = True
            assert await q.requeue([rq]) == 1
            await q.maintain()
            lb = await q.lease(8, worker="w1", lease_seconds=60)  # newest first: ls[0] is "rq"
            ls = lb.leased
            assert len(ls) == 8
            assert await q.heartbeat([(x.id, x.token) for x in ls], 60) == []
            reply = await q.commit_claiming(
                [Commit(ls[0].id, ls[0].token, RUN, ls[0].raw and Envelope.loads(ls[0].raw).fp,
                        [_env("c1"), _env("c2")], domain=DOMAIN, outcome="o", claim=1),
                 Commit(ls[1].id, ls[1].token, "r2", "0123456789abcdef", [_env("c3", run="r2")], domain=DOMAIN,
                        outcome="n")],
                worker="w1", lease_seconds=60)
            assert reply.acked == [True, True]
            assert reply.claims[0][0] != ""
            assert await q.ack([(ls[2].id, ls[2].token)]) == 1
            assert await q.nack(ls[3].id, ls[3].token, Envelope.loads(ls[3].raw), time.time() + 60)
            assert await q.release([(ls[4].id, ls[4].token)]) == 1
            assert await q.dead(ls[5].id, ls[5].token, {"reason": "x", "run": RUN})
            assert await q.hold(DOMAIN, base=1.0, cap=10.0, rnd=0.5) > time.time()
            event, _ = await q.drift(ls[6].id, ls[6].token, DOMAIN, {"why": "test"}, RUN)
            assert event in ("", "opened")
            assert await q.breaker_reset(DOMAIN) == 1  # the parked request goes back to READY
            report = await cancel_run(client, SPIDER, "r2")  # r2's one queued entry: the child c3
            assert report["removed"] == {"ready": 1, "delayed": 0, "parked": 0}, report
            assert await q.has_member(test_key, [Envelope.loads(ls[0].raw).fp, "fedcba9876543210"]) == [True, False]
            pool = ProxyPool(parse_proxies("http://p1.example:8080,http://p2.example:8080"), client)
            await pool.ban(pool.proxies[0].id, DOMAIN)
            pool.success(pool.proxies[0].id, DOMAIN, 10.0)
            pool.success(pool.proxies[1].id, DOMAIN, 20.0)
            await pool.flush()
            assert int(await client.hget(f"{PROXY_KEY_PREFIX}{pool.proxies[1].id}:{DOMAIN}", "successes")) == 1
            g = await q.gate(DOMAIN, ["p1", "p2"], limit=1, spacing=0.0, burst=1, aimd=True, start=1.0, wmax=4,
                             ttl=30.0)
            assert (g.granted, g.limit) == (1, 1)
            assert await q.ungate([(DOMAIN, "p1", 12, "renew"), (DOMAIN, "p1", 12, "ok")], 30.0) == 1
            await client.lpush(SOURCE_KEY, "https://e.example/s")
            stage = StartStage(client, SPIDER, "w1", SOURCE_KEY, "list")
            assert (await stage.stage(RUN, 5, low=1000, registration=60)).entries == [b"https://e.example/s"]
            sq = ShardedQueue(client, SPIDER, 2)  # a breaker opened in shard 0 is mirrored into shard 1
            assert await sq.mirror_trip(DOMAIN, skip=sq.parts[0]) == 1
            for meta, keys, args in recorded:
                _check_call(sq.parts[1] if meta.name == "breaker_trip" else q, meta, keys, args, test_key)
        finally:
            await client.aclose()

    asyncio.run(main())
    assert {meta.name for meta, _, _ in recorded} == set(lua.names())


def test_scripts_survive_a_flushed_script_cache(redis_url: str) -> None:
    """SCRIPT FLUSH (or a restarted server) empties the cache: calls reload by SHA, and a bulk seed reloads
    mid-stream without losing or doubling a batch."""
    sync = redis.Redis.from_url(redis_url)

    def rows(n: int, tag: str, flush_at: int) -> Iterator[tuple[str, str, str]]:
        for i in range(n):
            if i == flush_at:
                sync.script_flush()
            env = _env(f"{tag}{i}")
            yield env.dumps(), env.fp, "0"

    async def main() -> None:
        client = redisio.client(redis_url, socket_timeout=10)
        try:
            q = FleetQueue(client, SPIDER)
            sync.script_flush()
            assert await q.seed(RUN, [_env("one")]) == (1, 0)  # single MULTI: EVALSHA fails, EVAL loads
            assert await q._seed_rows(RUN, rows(95, "s", 35), 10) == (95, 0)  # streamed, flushed mid-way
            assert await q._seed_rows(RUN, rows(30, "s", -1), 10) == (0, 30)  # all SEEN now
            assert await q.counts() == {"ready": 96, "inflight": 0, "delayed": 0, "dlq": 0, "parked": 0}
            assert int(await client.hlen(q.keys.env)) == 96  # duplicates' envelopes were deleted
            sync.script_flush()
            lb = await q.lease(96, worker="w1", lease_seconds=60)
            assert len(lb.leased) == 96
            sync.script_flush()
            assert await q.ack([(x.id, x.token) for x in lb.leased]) == 96
        finally:
            await client.aclose()
            sync.close()

    asyncio.run(main())


def test_bound_refuses_a_bad_call_before_redis(redis_url: str) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            q = FleetQueue(client, SPIDER)
            with pytest.raises(lua.LuaCallError, match="heartbeat"):
                await q._heartbeat(q._k_heartbeat, ["1.0", "60", "id-without-token"])
            with pytest.raises(lua.LuaCallError, match="lease"):
                await q._lease([q.keys.ready], [q.keys.prefix, "0", 1, "60", "w1", 10, "n"])
        finally:
            await client.aclose()

    asyncio.run(main())

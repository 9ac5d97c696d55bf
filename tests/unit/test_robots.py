"""robots.txt records, their Redis cache and the fetch-once lock (scraper.policy.robots, scraper.queue.robots,
scraper.worker.robots), with fakeredis standing in for Redis: pure logic, no network.

The fleet-wide behaviour against real processes is tests/integration/test_robots.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis
from protego import Protego
from scrapy import Request
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.test import get_crawler
from twisted.internet.error import TimeoutError as TxTimeoutError

from middlewares.robots import FleetRobotsMiddleware, origin_of
from scraper.policy.refused import BodyTooLarge, RobotsDisallowed
from scraper.policy.robots import (
    ALLOW,
    MAX_BODY,
    RULES,
    UNAVAILABLE,
    UNAVAILABLE_TTL,
    RobotsRecord,
    RobotsUnavailable,
    record_for_error,
    record_for_response,
)
from scraper.policy.taxonomy import A, D, classify_exception
from scraper.queue.robots import RobotsStore, record_key
from scraper.worker.robots import RobotsResolver

ORIGIN = "http://shop.example:8080"
BODY = b"User-agent: *\nDisallow: /private\nCrawl-delay: 2\n"


# -- records ---------------------------------------------------------------------------------------


def test_status_semantics() -> None:
    ok = record_for_response(200, BODY, ttl=86400, now=1000.0, worker="w1")
    assert (ok.kind, ok.body, ok.ttl, ok.expires_at) == (RULES, BODY, 86400, 87400.0)
    assert record_for_response(200, b"x" * (MAX_BODY + 10), ttl=10).body == b"x" * MAX_BODY
    for status in (401, 403, 404, 410, 301):
        assert record_for_response(status, b"<html>", ttl=86400).kind == ALLOW, status
    for status in (429, 500, 503):
        rec = record_for_response(status, b"down", ttl=86400)
        assert (rec.kind, rec.ttl, rec.body) == (UNAVAILABLE, UNAVAILABLE_TTL, b""), status


def test_fetch_errors() -> None:
    too_large = record_for_error(classify_exception(BodyTooLarge("size=3000000")), ttl=500)
    assert (too_large.kind, too_large.ttl, too_large.note) == (ALLOW, 500, "body:too_large")
    timeout = record_for_error(classify_exception(TxTimeoutError()), ttl=500)
    assert (timeout.kind, timeout.ttl) == (UNAVAILABLE, UNAVAILABLE_TTL)
    assert timeout.note.startswith("net:")


def test_record_round_trip_and_hostile_contents() -> None:
    rec = record_for_response(200, "\ufeffUser-agent: *\nDisallow: /é\n".encode(), ttl=60, now=5.0, worker="w")
    assert RobotsRecord.loads(rec.dumps()) == rec
    assert RobotsRecord.loads(rec.dumps().encode()) == rec
    good = json.loads(rec.dumps())
    for bad in (None, b"", b"\x80\x81", b"[]", b"null", json.dumps({**good, "v": 2}),
                json.dumps({**good, "kind": "maybe"}), json.dumps({**good, "status": "200"}),
                json.dumps({**good, "ttl": True}), json.dumps({**good, "body": 7}),
                json.dumps({k: v for k, v in good.items() if k != "fetched_at"}), b"x" * (4 * MAX_BODY + 1)):
        assert RobotsRecord.loads(bad) is None, bad


def test_typed_outcomes() -> None:
    rec = record_for_response(200, BODY, ttl=60, now=0.0, worker="w1")
    v = classify_exception(RobotsDisallowed(f"robots.txt of {ORIGIN} disallows it: {rec.evidence()}"))
    assert (v.cls, v.reason) == (D, "policy:robots")
    assert "sha256=" in v.detail and "status=200" in v.detail and "fetched_at=1970-01-01T00:00:00Z" in v.detail
    u = classify_exception(RobotsUnavailable("robots.txt of x could not be fetched (http:503)", retry_after=42.0))
    assert (u.cls, u.reason, u.retry_after) == (A, "robots:unavailable", 42.0)
    # not an IgnoreRequest: the classifier would finish the request as "ignored" instead of retrying it
    assert not isinstance(RobotsUnavailable("x"), IgnoreRequest)


# -- the resolver and the Redis cache --------------------------------------------------------------


class _Site:
    """A fetch function counting calls; each fetch takes ``seconds``."""

    def __init__(self, record: RobotsRecord, seconds: float = 0.05) -> None:
        self.record = record
        self.seconds = seconds
        self.calls = 0

    async def __call__(self, origin: str) -> RobotsRecord:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return self.record


def _parse(body: bytes) -> Any:
    return Protego.parse(body.decode("utf-8", "ignore"))


def test_three_workers_fetch_once_and_share() -> None:
    async def go() -> None:
        redis = FakeAsyncRedis()
        site = _Site(record_for_response(200, BODY, ttl=3600, worker="w0"), seconds=0.2)
        workers = [RobotsResolver(site, _parse, store=RobotsStore(redis), poll=0.01) for _ in range(3)]
        entries = await asyncio.gather(*(w.entry(ORIGIN) for w in workers for _ in range(10)))
        assert site.calls == 1
        assert sum(w.fetches for w in workers) == 1
        assert {e.record for e in entries} == {site.record}
        assert all(not e.parser.can_fetch(f"{ORIGIN}/private/1", "fleet") for e in entries)
        assert entries[0].parser.can_fetch(f"{ORIGIN}/p/1", "fleet")
        assert entries[0].parser.crawl_delay("fleet") == 2
        assert await redis.get(record_key(ORIGIN) + ":lock") is None  # released with the record written
        ttl_ms = await redis.pttl(record_key(ORIGIN))
        assert 3_500_000 < ttl_ms <= 3_600_000
        # a fourth worker started later reads Redis, never the site
        late = RobotsResolver(site, _parse, store=RobotsStore(redis))
        assert (await late.entry(ORIGIN)).record == site.record and late.shared == 1 and site.calls == 1
        await redis.aclose()

    asyncio.run(go())


class _LateWriter(RobotsStore):
    """The fetcher's put lands between this worker's look and its lock (the put freed the lock it takes)."""

    def __init__(self, client: Any, record: Any) -> None:
        super().__init__(client)
        self.record, self.looks = record, 0

    async def get(self, origin: str) -> Any:
        self.looks += 1
        if self.looks == 1:
            await RobotsStore(self.client).put(origin, self.record)
            return None
        return await super().get(origin)


def test_a_record_written_between_look_and_lock_frees_the_lock() -> None:
    async def go() -> None:
        redis = FakeAsyncRedis()
        site = _Site(record_for_response(200, BODY, ttl=3600, worker="w0"))
        w = RobotsResolver(site, _parse, store=_LateWriter(redis, site.record), poll=0.01)
        assert (await w.entry(ORIGIN)).record == site.record and site.calls == 0 and w.shared == 1
        assert await redis.get(record_key(ORIGIN) + ":lock") is None
        await redis.aclose()

    asyncio.run(go())


def test_memory_then_expiry() -> None:
    async def go() -> None:
        now = [1000.0]
        redis = FakeAsyncRedis()
        site = _Site(record_for_response(200, BODY, ttl=60, now=1000.0))
        w = RobotsResolver(site, _parse, store=RobotsStore(redis), clock=lambda: now[0])
        first = await w.entry(ORIGIN)
        await redis.flushall()
        assert await w.entry(ORIGIN) is first  # from memory: no Redis round trip, no refetch
        now[0] = 1061.0  # past the record's TTL: looked up again (Redis is empty: fetched again)
        site.record = record_for_response(404, b"", ttl=60, now=1061.0)
        again = await w.entry(ORIGIN)
        assert again.record.kind == ALLOW and again.parser is None and site.calls == 2
        await redis.aclose()

    asyncio.run(go())


def test_a_dead_fetcher_lock_lapses_and_another_worker_fetches() -> None:
    async def go() -> None:
        redis = FakeAsyncRedis()
        store = RobotsStore(redis)
        assert await store.lock(ORIGIN, "dead-worker", 150)  # took the lock, then died: no record ever
        site = _Site(record_for_response(200, BODY, ttl=60))
        w = RobotsResolver(site, _parse, store=store, lock_seconds=5.0, poll=0.02)
        entry = await asyncio.wait_for(w.entry(ORIGIN), 3.0)
        assert entry.record.kind == RULES and site.calls == 1
        await redis.aclose()

    asyncio.run(go())


def test_waiting_is_bounded() -> None:
    async def go() -> None:
        redis = FakeAsyncRedis()
        store = RobotsStore(redis)
        assert await store.lock(ORIGIN, "slow-worker", 10_000)
        site = _Site(record_for_response(200, BODY, ttl=60))
        w = RobotsResolver(site, _parse, store=store, lock_seconds=0.2, poll=0.02)
        entry = await asyncio.wait_for(w.entry(ORIGIN), 3.0)
        assert entry.record.kind == UNAVAILABLE and entry.record.note == "robots:wait_expired"
        assert site.calls == 0
        # not remembered: the next request looks again (and finds the slow worker's record)
        await store.put(ORIGIN, record_for_response(200, BODY, ttl=60))
        assert (await w.entry(ORIGIN)).record.kind == RULES
        await redis.aclose()

    asyncio.run(go())


def test_unavailable_is_shared_briefly() -> None:
    async def go() -> None:
        redis = FakeAsyncRedis()
        site = _Site(record_for_response(503, b"", ttl=86400))
        w = RobotsResolver(site, _parse, store=RobotsStore(redis))
        assert (await w.entry(ORIGIN)).record.kind == UNAVAILABLE
        assert 0 < await redis.pttl(record_key(ORIGIN)) <= UNAVAILABLE_TTL * 1000
        await redis.aclose()

    asyncio.run(go())


def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    async def go() -> None:
        site = _Site(record_for_response(200, BODY, ttl=60), seconds=0.2)
        w = RobotsResolver(site, _parse)  # no Redis: plain Scrapy, once per process
        first = asyncio.ensure_future(w.entry(ORIGIN))
        second = asyncio.ensure_future(w.entry(ORIGIN))
        await asyncio.sleep(0.05)
        first.cancel()
        assert (await second).record.kind == RULES and site.calls == 1
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(go())


# -- the middleware, outside a worker and with a stand-in runtime --------------------------------------


def test_middleware_is_off_unless_robotstxt_obey() -> None:
    with pytest.raises(NotConfigured):
        FleetRobotsMiddleware.from_crawler(get_crawler(settings_dict={"ROBOTSTXT_OBEY": False}))


def test_origin_is_scheme_host_port_without_credentials() -> None:
    assert origin_of(Request("https://user:pw@Shop.Example:8443/a?b")) == "https://shop.example:8443"
    assert origin_of(Request("http://shop.example/a")) == "http://shop.example"
    assert origin_of(Request("data:,hello")) is None


class _Runtime:
    client = None  # no Redis: the resolver stays per process
    log = None


def test_middleware_outcomes() -> None:
    async def go() -> None:
        crawler = get_crawler(settings_dict={"ROBOTSTXT_OBEY": True, "ROBOTSTXT_USER_AGENT": "fleetbot"})
        mw = FleetRobotsMiddleware.from_crawler(crawler)
        records = {
            "http://a.example": record_for_response(200, b"User-agent: fleetbot\nDisallow: /private\n", ttl=60),
            "http://b.example": record_for_response(503, b"", ttl=60),
        }

        async def fetch(origin: str) -> RobotsRecord:
            return records[origin]

        mw.resolver.fetch = fetch
        assert await mw.process_request(Request("http://a.example/p/1")) is None
        with pytest.raises(RobotsDisallowed) as info:
            await mw.process_request(Request("http://a.example/private/1"))
        assert "robots.txt of http://a.example disallows it for user agent 'fleetbot'" in info.value.detail
        assert crawler.stats.get_value("robotstxt/forbidden") == 1
        assert await mw.process_request(Request("http://a.example/private/1", meta={"dont_obey_robotstxt": True})) \
            is None
        assert await mw.process_request(Request("http://b.example/p/1")) is None  # plain Scrapy: allowed
        crawler.fleet = _Runtime()  # type: ignore[attr-defined]
        with pytest.raises(RobotsUnavailable) as unavailable:
            await mw.process_request(Request("http://b.example/p/1"))
        assert unavailable.value.retry_after is not None and 1.0 <= unavailable.value.retry_after <= 60.0

    asyncio.run(go())


def test_a_workers_own_failure_is_not_shared() -> None:
    async def go() -> None:
        proxy = record_for_error(classify_exception(RuntimeError("engine closed")), ttl=86400)
        assert (proxy.kind, proxy.ttl) == (UNAVAILABLE, 0.0)
        redis = FakeAsyncRedis()
        site = _Site(proxy)
        w = RobotsResolver(site, _parse, store=RobotsStore(redis))
        assert (await w.entry(ORIGIN)).record.kind == UNAVAILABLE
        assert await redis.get(record_key(ORIGIN)) is None
        assert await redis.get(record_key(ORIGIN) + ":lock") is None  # another worker may fetch at once
        site.record = record_for_response(200, BODY, ttl=60)
        assert (await w.entry(ORIGIN)).record.kind == RULES and site.calls == 2  # not remembered either
        await redis.aclose()

    asyncio.run(go())


def test_a_cancelled_fetch_gives_the_lock_up() -> None:
    async def go() -> None:
        redis = FakeAsyncRedis()
        w = RobotsResolver(_Site(record_for_response(200, BODY, ttl=60), seconds=5.0), _parse,
                           store=RobotsStore(redis))
        task = asyncio.ensure_future(w.entry(ORIGIN))
        await asyncio.sleep(0.05)
        assert await redis.get(record_key(ORIGIN) + ":lock") is not None
        for pending in list(w._pending.values()):
            pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert await redis.get(record_key(ORIGIN) + ":lock") is None
        await redis.aclose()

    asyncio.run(go())

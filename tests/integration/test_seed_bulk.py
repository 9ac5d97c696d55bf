"""Bulk seeding (MULTI: HSET + SEED_BULK, streamed batches) leaves exactly the state that the
per-entry SEED script leaves for the same envelopes: same SEEN buckets and count, same READY
scores in the same order, same envelopes, same seq. Against the real redis-server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from scrapy import Request

from scraper.queue import redisio, seenset
from scraper.queue import scripts as lua
from scraper.queue.client import FleetQueue
from scraper.queue.envelope import Envelope, SeedEncoder
from scraper.queue.seedwire import entry_args as _entry_args

pytestmark = pytest.mark.integration


def _run(redis_url: str, body: Callable[[Any], Awaitable[None]]) -> None:
    """``body(client)`` on a client like the CLI's (commands packed by hiredis), closed afterwards."""

    async def main() -> None:
        client: Any = redisio.client(redis_url, socket_timeout=10)
        try:
            await body(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def _env(spider: str, path: str, *, run: str = "r1", priority: int = 0, dont_filter: bool = False) -> Envelope:
    req = Request(f"https://shop.example/{path}", priority=priority, dont_filter=dont_filter)
    return Envelope.from_request(req, spider_name=spider, run=run)


async def _reference_seed(q: FleetQueue, client: Any, run: str, envs: list[Envelope]) -> tuple[int, int]:
    """The per-entry SEED script, as FleetQueue.seed called it before bulk seeding."""
    script = lua.Bound(client, "seed")
    head = [str(q.dedup_ttl), "1700000000.5", run]
    args = [a for env in envs for a in _entry_args(env, force_filter=True)]
    enq = int(await script(q.keys.select(script.meta.keys, run=run), head + args)) if envs else 0
    await client.zadd(q.keys.runs, {run: 1700000000.5}, nx=True)
    return enq, len(envs) - enq


async def _state(q: FleetQueue, client: Any, runs: list[str]) -> dict[str, Any]:
    """Everything seeding writes, with entry ids (random) replaced by the entries themselves."""
    envs = {k: json.loads(v) for k, v in (await client.hgetall(q.keys.env)).items()}
    assert not any("enqueued_at" in e for e in envs.values())  # no longer written (Envelope.enqueued_at)
    ready = [(score, json.dumps(envs[i], sort_keys=True))
             for i, score in await client.zrange(q.keys.ready, 0, -1, withscores=True)]
    return {
        "ready": ready,
        "env": sorted(json.dumps(e, sort_keys=True) for e in envs.values()),
        "seen": {r: (await seenset.buckets(client, q.keys.seen(r)), await client.hget(q.keys.seen(r), "count"))
                 for r in runs},
        "ttl": {r: await client.ttl(q.keys.seen(r)) > 0 for r in runs},
        "seq": await client.get(q.keys.prefix + "seq"),
        "runs": sorted(x for x in await client.zrange(q.keys.runs, 0, -1)),
    }


def _both(redis_url: str, calls: list[tuple[str, list[str], dict[str, Any]]], batch: int) -> None:
    """Run the same seed calls (run, paths, envelope options) both ways; states and counts must match."""

    async def body(client: Any) -> None:
        ref, new = FleetQueue(client, "ref"), FleetQueue(client, "new")
        for run, paths, opts in calls:
            want = await _reference_seed(ref, client, run, [_env("ref", p, run=run, **opts) for p in paths])
            got = await new.seed(run, [_env("new", p, run=run, **opts) for p in paths], batch=batch)
            assert got == want, (run, paths)
        runs = sorted({c[0] for c in calls})
        a, b = await _state(ref, client, runs), await _state(new, client, runs)
        for e in a["ready"] + b["ready"]:
            assert '"spider"' in e[1]
        norm = [(s, e.replace('"spider": "ref"', '"spider": "new"')) for s, e in a["ready"]]
        assert norm == b["ready"]
        assert [e.replace('"spider": "ref"', '"spider": "new"') for e in a["env"]] == b["env"]
        assert (a["seen"], a["ttl"], a["seq"], a["runs"]) == (b["seen"], b["ttl"], b["seq"], b["runs"])

    _run(redis_url, body)


@pytest.mark.parametrize("batch", [1, 3, 2000])
def test_bulk_seed_leaves_the_same_state_as_per_entry_seed(redis_url: str, batch: int) -> None:
    paths = [f"p/{i}" for i in range(40)]
    _both(redis_url, [
        ("r1", paths[:10] + paths[:3] + ["p/x", "p/x"], {}),  # duplicates within a call
        ("r1", paths[5:25], {}),  # and against what an earlier call stored
        ("r2", paths[:8], {}),  # another run: its own SEEN
        ("r1", paths[20:30], {"priority": 7}),
        ("r1", [*paths[28:34], "p/x"], {"dont_filter": True}),  # seeds never bypass SEEN
        ("r1", [], {}),
        ("r2", paths[30:], {"priority": -3}),
    ], batch)


def test_bulk_seed_with_many_entries_per_bucket(redis_url: str) -> None:
    # ~1,500 URLs: buckets (4,096 of them) get several members each, found at 7-byte offsets
    paths = [f"item/{i}.html" for i in range(1500)]
    _both(redis_url, [("r1", paths[:900], {}), ("r1", paths[600:], {}), ("r1", paths[::7], {})], 256)


def test_bulk_seed_handles_fingerprints_that_are_not_lowercase_hex(redis_url: str) -> None:
    async def body(client: Any) -> None:
        ref, new = FleetQueue(client, "ref"), FleetQueue(client, "new")
        counts = []
        for q in (ref, new):
            envs = [_env(q.spider, f"u/{i}") for i in range(7)]
            envs[1].fp = envs[0].fp.upper()  # another bucket unless it starts with 3 digits
            envs[2].fp = envs[0].fp[:3] + envs[0].fp[3:].upper()  # hex2bin: the same member as envs[0]
            envs[3].fp = envs[3].fp[:15]  # short: set_add packs what it has
            envs[4].fp = envs[3].fp + "0"
            envs[5].fp = envs[3].fp  # a duplicate of the short one
            envs[6].fp = envs[6].fp + "ff"  # long: set_add ignores the tail
            envs.append(_env(q.spider, "u/6"))  # so this one is a duplicate
            if q is ref:
                counts.append(await _reference_seed(q, client, "r1", envs))
            else:
                counts.append(await q.seed("r1", envs))
        assert counts[0] == counts[1]
        assert counts[1][1] >= 3  # envs[2], envs[5] and the last one at least
        assert await seenset.buckets(client, ref.keys.seen("r1")) == await seenset.buckets(client, new.keys.seen("r1"))

    _run(redis_url, body)


def test_seed_entries_streams_batches_in_order(redis_url: str) -> None:
    async def body(client: Any) -> None:
        q = FleetQueue(client, "stream")
        enc = SeedEncoder(spider_name="stream", run="r1")
        urls = [f"http://127.0.0.1:8080/item/{i}.html" for i in range(1000)]
        entries = [enc.entry(u) for u in urls + urls[:100]]
        assert await q.seed_entries("r1", entries, batch=64) == (1000, 100)
        ids = await client.zrange(q.keys.ready, 0, -1)  # newest first
        got = [Envelope.loads(await client.hget(q.keys.env, i)).url for i in ids]
        assert got == urls[::-1]
        assert await client.hlen(q.keys.env) == 1000
        assert await q.seed_entries("r1", entries[:10]) == (0, 10)

    _run(redis_url, body)


def test_seed_input_error_midway_keeps_whole_batches(redis_url: str) -> None:
    async def body(client: Any) -> None:
        q = FleetQueue(client, "broken")
        enc = SeedEncoder(spider_name="broken", run="r1")

        def entries() -> Iterator[tuple[str, str]]:
            for i in range(250):
                yield enc.entry(f"http://127.0.0.1:8080/item/{i}.html")
            raise ValueError("bad URL")

        with pytest.raises(ValueError, match="bad URL"):
            await q.seed_entries("r1", entries(), batch=100)
        # the two batches handed to Redis ran whole; the half-built third never went
        assert await client.zcard(q.keys.ready) == 200
        assert await client.hlen(q.keys.env) == 200
        assert int(await client.hget(q.keys.seen("r1"), "count")) == 200
        # a later, fixed seed of the same run skips what got in
        fixed = [enc.entry(f"http://127.0.0.1:8080/item/{i}.html") for i in range(300)]
        assert await q.seed_entries("r1", fixed, batch=100) == (100, 200)

    _run(redis_url, body)

"""``fleet cancel``'s queue side: stop one run of a spider and drop its queued work.

Why two steps and not one script: READY, DELAYED and PARKED hold the entries of every run of a spider,
and an entry names its run only inside its envelope JSON, so finding a run's entries means reading
every queued envelope; one script doing that over a million entries would block Redis for seconds. So:

1. **Mark** (atomic, one ``HSETNX`` on ``P cancelled``). From that instant the run is stopped fleet-wide:
   ``LEASE`` forgets its entries unexecuted wherever they are when leased (READY, or later back from
   DELAYED, PARKED or an expired lease), ``COMMIT`` queues none of its children, records no DONE and
   only acknowledges, ``NACK`` forgets instead of delaying, ``DEAD`` writes no DLQ entry. Workers learn
   of the mark within ``POLL_SECONDS`` and drop what they hold of the run (scraper/worker/cancels.py).
2. **Sweep** (per batch, ``CANCEL``): READY, DELAYED and each PARKED set are scanned (``ZSCAN``, which
   returns every member present for the whole scan at least once) and each batch of ids goes to one
   ``CANCEL`` call, which re-checks in Redis that the id is still in that set and its envelope is of the
   run before removing it. Atomic per batch only: an entry that moves between sets during the sweep
   (promoted, reaped, released) may be missed by it; the mark still drops it at its next ``LEASE``. The
   counts are of what the sweep removed.

A spider split into shards (``scraper.queue.shards``) is marked and swept in every shard, the marks
first, so that no shard's scripts act on the run once any shard's sweep has begun.

SEEN, DONE and written objects stay: a cancel stops work, it does not erase results. The mark is
permanent (one small hash field per cancelled run); a run id once cancelled stays cancelled, so a new
crawl takes a new run id.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from scraper.queue import scripts as lua
from scraper.queue.client import Keys

__all__ = ["SWEEP_BATCH", "CancelReport", "cancel_run", "cancelled_runs", "is_known_run"]

SWEEP_BATCH = 500  # ids per CANCEL call: a call stays well under a millisecond of Redis time

CancelReport = dict[str, Any]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _shard_keys(client: aioredis.Redis, spider: str) -> list[Keys]:
    """The keys of every shard of the spider: its count's, then those of the counts it had before."""
    from scraper.queue.shards import open_queue

    return [p.keys for p in (await open_queue(client, spider)).read_parts]


async def is_known_run(client: aioredis.Redis, keys: Keys, run: str) -> bool:
    """Whether ``run`` was ever seeded for this spider (``P runs`` of any of its shards)."""
    from scraper.queue.shards import open_queue

    return await (await open_queue(client, keys.spider)).first_seen(run) is not None


async def cancelled_runs(client: aioredis.Redis, keys: Keys) -> set[str]:
    """The runs of this spider that were cancelled (one HKEYS; what workers poll)."""
    return {_s(r) for r in await client.hkeys(keys.cancelled)}


async def _sweep(client: aioredis.Redis, script: lua.Bound, keys: Keys, queued: str, run: str) -> int:
    names = {"cancelled": keys.cancelled, "queued": queued, "env": keys.env, "lease": keys.lease,
             "dlv": keys.dlv}
    kk = [names[n] for n in script.meta.keys]
    dropped = 0
    cursor: Any = 0
    while True:
        cursor, rows = await client.zscan(queued, cursor, count=SWEEP_BATCH)
        ids = [_s(member) for member, _score in rows]
        for i in range(0, len(ids), SWEEP_BATCH):
            dropped += int(await script(kk, [run, *ids[i : i + SWEEP_BATCH]]))
        if int(cursor) == 0:
            return dropped


async def _inflight_of(client: aioredis.Redis, keys: Keys, run: str) -> int:
    """How many of the run's entries are leased right now (read only; the workers holding them drop them)."""
    n = 0
    cursor: Any = 0
    while True:
        cursor, rows = await client.zscan(keys.inflight, cursor, count=SWEEP_BATCH)
        ids = [_s(member) for member, _score in rows]
        if ids:
            for raw in await client.hmget(keys.env, ids):
                try:
                    n += raw is not None and json.loads(raw).get("run") == run
                except (ValueError, AttributeError):
                    pass  # not an envelope: LEASE's and the worker's business, not a count of this run
        if int(cursor) == 0:
            return n


async def cancel_run(client: aioredis.Redis, spider: str, run: str) -> CancelReport:
    """Mark ``run`` cancelled, then sweep its queued entries; returns the counts (see the module doc)."""
    shards = await _shard_keys(client, spider)
    now = repr(time.time())
    newly = False
    for keys in shards:  # every mark before any sweep (module doc)
        newly = bool(await client.hsetnx(keys.cancelled, run, now)) or newly
    script = lua.Bound(client, "cancel")
    inflight = ready = delayed = parked = done = 0
    for keys in shards:
        inflight += await _inflight_of(client, keys, run)
        ready += await _sweep(client, script, keys, keys.ready, run)
        delayed += await _sweep(client, script, keys, keys.delayed, run)
        for domain in sorted(_s(d) for d in await client.smembers(keys.parkdom)):
            parked += await _sweep(client, script, keys, keys.parked(domain), run)
        done += int(await client.hget(keys.done(run), "count") or 0)
    return {
        "spider": spider,
        "run": run,
        "already_cancelled": not newly,
        "removed": {"ready": ready, "delayed": delayed, "parked": parked},
        "total_removed": ready + delayed + parked,
        "inflight": inflight,
        "done": done,
    }

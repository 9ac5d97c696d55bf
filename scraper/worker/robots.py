"""One robots.txt fetch per site for the whole fleet: the worker side of the shared cache.

Why: Scrapy's RobotsTxtMiddleware fetches each site's robots.txt once per process; a fleet of N workers
fetched it N times, and again on every restart. :class:`RobotsResolver` answers "what does ``origin``'s
robots.txt say" from, in order:

1. this worker's memory (parsed once, until the record expires: no Redis round trip per request);
2. the fleet's record in Redis (:mod:`scraper.queue.robots`), written by whichever worker fetched it;
3. a fetch, by the one worker that takes the site's lock (``SET NX PX``). The others poll the record
   every :data:`POLL` seconds (an ``asyncio.sleep``: the reactor keeps running) until it appears or the
   lock lapses (its holder died: one of them takes it and fetches), for at most ``lock_seconds`` plus a
   poll. Past that bound the answer is UNAVAILABLE for now (the request is retried later as class A).

Within a worker, the concurrent requests of one site share one resolution (an asyncio task behind
``asyncio.shield``: a request cancelled while waiting, by the watchdog say, does not cancel the others').
Without Redis (plain Scrapy, no Fleet runtime) the resolver fetches per process, as Scrapy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from scraper.policy.robots import UNAVAILABLE, RobotsRecord
from scraper.queue.robots import RobotsStore

__all__ = ["POLL", "ROBOTS_WAIT_KEY", "Entry", "RobotsResolver"]

#: Request meta set while a request waits for its site's robots.txt (FleetRobotsMiddleware): the fetch may
#: queue behind the site's Crawl-delay in the download slot, so the stall watchdog counts the wait as queueing
ROBOTS_WAIT_KEY = "_fleet_robots_wait"
POLL = 0.2  # seconds between two looks at the record while another worker fetches it
MAX_ORIGINS = 10_000  # sites remembered per worker (the oldest half is dropped when full)


@dataclass(frozen=True, slots=True)
class Entry:
    """A site's record and its parsed rules (``parser``: the spider's ROBOTSTXT_PARSER; None unless the
    record is RULES)."""

    record: RobotsRecord
    parser: Any | None


class RobotsResolver:
    """``await resolver.entry(origin)``: the site's robots.txt, fetched once for the fleet."""

    def __init__(self, fetch: Callable[[str], Awaitable[RobotsRecord]], parse: Callable[[bytes], Any], *,
                 store: RobotsStore | None = None, lock_seconds: float = 40.0, poll: float = POLL,
                 clock: Callable[[], float] = time.time, log: Any = None) -> None:
        self.fetch = fetch
        self.parse = parse
        self.store = store
        self.lock_seconds = lock_seconds
        self.poll = poll
        self.clock = clock
        self.log = log
        self.fetches = 0  # robots.txt fetched by this worker
        self.shared = 0  # records taken from Redis (fetched by a worker, this one included, earlier)
        self._local: dict[str, Entry] = {}
        self._pending: dict[str, asyncio.Task[Entry]] = {}

    async def entry(self, origin: str) -> Entry:
        hit = self._local.get(origin)
        if hit is not None and hit.record.fresh(self.clock()):
            return hit
        task = self._pending.get(origin)
        if task is None:
            task = self._pending[origin] = asyncio.ensure_future(self._resolve(origin))
            task.add_done_callback(lambda _t: self._pending.pop(origin, None))
        return await asyncio.shield(task)

    async def _resolve(self, origin: str) -> Entry:
        record = await self._record(origin)
        entry = Entry(record, self.parse(record.body) if record.kind == "rules" else None)
        if record.fresh(self.clock()):
            if len(self._local) >= MAX_ORIGINS:
                for key in list(self._local)[: MAX_ORIGINS // 2]:
                    del self._local[key]
            self._local[origin] = entry
        return entry

    async def _record(self, origin: str) -> RobotsRecord:
        store = self.store
        if store is None:
            return await self._fetch(origin)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_seconds + self.poll
        while True:
            record = await store.get(origin)
            if record is not None and record.fresh(self.clock()):
                self.shared += 1
                return record
            if await store.lock(origin, token, int(self.lock_seconds * 1000)):
                record = await store.get(origin)  # written between our look and the lock (the fetcher's
                if record is not None and record.fresh(self.clock()):  # put freed the lock we then took)
                    with contextlib.suppress(Exception):
                        await store.unlock(origin)  # ours: not left to block a fetch after the record expires
                    self.shared += 1
                    return record
                try:
                    record = await self._fetch(origin)
                except BaseException:  # cancelled (the worker stops) or a bug: let another worker fetch
                    with contextlib.suppress(Exception):
                        await store.unlock(origin)
                    raise
                if record.ttl > 0:
                    await store.put(origin, record)
                else:  # this worker's own failure (scraper.policy.robots.record_for_error): not shared
                    await store.unlock(origin)
                return record
            if time.monotonic() >= deadline:
                if self.log is not None:
                    self.log.warning("robots_wait_expired", origin=origin, waited=round(self.lock_seconds, 1))
                return RobotsRecord(UNAVAILABLE, 0, b"", self.clock(), 0.0, "robots:wait_expired")
            await asyncio.sleep(self.poll)

    async def _fetch(self, origin: str) -> RobotsRecord:
        self.fetches += 1
        record = await self.fetch(origin)
        if self.log is not None:
            self.log.info("robots_fetched", origin=origin, kind=record.kind, status=record.status,
                          note=record.note, bytes=len(record.body), ttl=round(record.ttl, 1))
        return record

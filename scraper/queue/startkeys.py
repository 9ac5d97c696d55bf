"""Moving entries of a scrapy-redis start key (``<spider>:start_urls``) into Fleet's queue, losing none.

Why a staging list: turning an entry into a request is the spider's own Python
(``make_request_from_data``), so it cannot happen inside the Lua script that takes it off the user's key.
``STAGE_STARTS`` moves a batch atomically from the start key into this worker's staging list
(``P stage:<worker>``) and registers the worker in ``P stage`` (worker → ``deadline|run``); the worker
converts and seeds the batch, then deletes the staging list (``done``). A worker that dies between the
move and the delete leaves its list behind; once its registration expires (it is refreshed on every
pass), the next worker to call ``STAGE_STARTS`` adopts the list under the run it was moved for. Seeding
checks SEEN, so a batch seeded twice (a crash after the seed, before the delete) is queued once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from scraper.queue import redisio
from scraper.queue import scripts as lua
from scraper.queue.client import Keys

__all__ = ["KINDS", "Staged", "StartStage"]

#: How a start key is read, as scrapy-redis reads it: a list (LPOP), a set (SPOP, REDIS_START_URLS_AS_SET)
#: or a sorted set (ZPOPMAX, REDIS_START_URLS_AS_ZSET: the highest score first).
KINDS = ("list", "set", "zset")


@dataclass(frozen=True)
class Staged:
    """One pass's batch: the run it belongs to and the raw entries (bytes, never decoded here)."""

    run: str
    entries: list[bytes]


class StartStage:
    """The STAGE_STARTS call and the staging list of one (spider, worker, start key)."""

    def __init__(self, client: aioredis.Redis, spider: str, worker: str, source: str, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"start key kind {kind!r}: expected one of {KINDS}")
        self.client = client
        self.keys = Keys(spider)
        self.worker = worker
        self.kind = kind
        self.staging = self.keys.staging(worker)
        if redisio.is_cluster(client) and key_slot(source.encode()) != key_slot(self.keys.ready.encode()):
            # STAGE_STARTS moves entries from the start key atomically: both must be in one slot
            raise ValueError(
                f"start key {source!r} is in another Redis Cluster slot than spider {spider!r}'s queue: "
                f"name it with the spider's hash tag, e.g. '{{{spider}}}:start_urls'")
        self._script = lua.Bound(client, "stage_starts")
        names = {"source": source, "stage": self.keys.stage, "staging": self.staging, "ready": self.keys.ready}
        self._k = [names[n] for n in self._script.meta.keys]

    async def stage(self, run: str, n: int, *, low: int, registration: float) -> Staged:
        """Up to ``n`` entries to convert: this worker's leftovers, a dead worker's list, or new entries
        (only while READY holds fewer than ``low``). ``registration``: seconds this worker's claim on its
        staging list lasts unless renewed by the next call."""
        now = time.time()
        reply: list[Any] = await self._script(
            self._k, [self.keys.prefix, self.worker, repr(now), repr(now + registration), run, n, self.kind, low])
        first = reply[0]
        return Staged(first.decode() if isinstance(first, bytes) else str(first),
                      [e if isinstance(e, bytes) else str(e).encode() for e in reply[1:]])

    async def done(self) -> None:
        """The staged batch is seeded (or dead-lettered): forget it."""
        await self.client.delete(self.staging)

    async def leave(self) -> None:
        """Clean shutdown: unregister, unless entries are still staged (another worker adopts those)."""
        if not await self.client.exists(self.staging):
            await self.client.hdel(self.keys.stage, self.worker)

    async def pending(self) -> int:
        """Entries in staging lists of all workers (for status and tests)."""
        total = 0
        for w in await self.client.hkeys(self.keys.stage):
            total += int(await self.client.llen(self.keys.staging(w.decode() if isinstance(w, bytes) else w)))
        return total

"""The fleet's robots.txt cache in Redis: one record per site, and the lock that makes one worker fetch it.

Why per site (origin: scheme, host, port) and not per spider: robots.txt is the site's file, the same
whoever asks (RFC 9309 scopes it to one protocol, host and port); each spider applies its own user agent
to the shared body (middlewares.robots). Per spider, N spiders crawling a site would fetch it N times.
The keys carry the origin as their hash tag, so the record and its lock live on one Redis Cluster slot:

* ``fleet:robots:{origin}``: the :class:`~scraper.policy.robots.RobotsRecord` JSON, expiring with the
  record's TTL (FLEET_ROBOTS_TTL; a minute for an unavailable file);
* ``fleet:robots:{origin}:lock``: ``SET NX PX`` by the worker that fetches it; whoever fails to take it
  polls the record (scraper.worker.robots) instead of fetching.

Why no Lua: the lock only guards "fetch while there is no record". The fetcher writes the record, then
deletes the lock whoever holds it by then: once the record exists nobody needs the lock, and a worker
that took an expired lock re-reads the record before fetching.
"""

from __future__ import annotations

from typing import Any

from scraper.policy.robots import RobotsRecord

__all__ = ["RobotsStore", "record_key"]

_MAX_ORIGIN = 300  # a longer "origin" (a hostile link's host) is cut: a key, not a URL


def record_key(origin: str) -> str:
    return f"fleet:robots:{{{origin[:_MAX_ORIGIN]}}}"


class RobotsStore:
    """Get, lock and put robots.txt records in Redis (redis.asyncio client)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def get(self, origin: str) -> RobotsRecord | None:
        return RobotsRecord.loads(await self.client.get(record_key(origin)))

    async def lock(self, origin: str, token: str, ms: int) -> bool:
        """True if this worker now fetches ``origin``'s robots.txt (for at most ``ms`` milliseconds)."""
        return bool(await self.client.set(record_key(origin) + ":lock", token, nx=True, px=max(1, ms)))

    async def put(self, origin: str, record: RobotsRecord) -> None:
        key = record_key(origin)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, record.dumps(), px=max(1, int(record.ttl * 1000)))
            pipe.delete(key + ":lock")
            await pipe.execute()

    async def unlock(self, origin: str) -> None:
        """Give the lock up without a record (a fetch that failed for this worker's own reasons)."""
        await self.client.delete(record_key(origin) + ":lock")

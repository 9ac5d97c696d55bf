"""Which object store a spider's processes write to, recorded in Redis so that no process writes elsewhere.

Why: a worker takes work from every run of its spider and writes it to its own ``FLEET_STORE``, whose default
(``file://./data``) is relative to the directory it was started in; the run manifest's completeness comes from
Redis. A `fleet run` in another directory therefore stored another run's items there while that run's manifest,
in the first store, said ``complete: true`` over an empty directory. The spider's store (``Keys.store``) is
recorded by the first process that needs it and may change only while the spider has no work queued, in flight,
delayed or parked and no worker waiting (an operator moving the store); each run's store (``Keys.runstores``) is
recorded when the run is first worked and never changes (its data and manifest live there).
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from scraper.queue.keys import Keys, QueueError

__all__ = ["bind_store"]


async def bind_store(client: Redis, spider: str, store: str, *, run: str | None = None,
                     rebind: bool = True) -> None:
    """Record ``store`` (an identity from ``scraper.store.backends.store_identity``) for ``spider`` (and ``run``),
    or raise :class:`QueueError` with one line when another store holds its data. ``rebind=False``: only
    compare (``fleet runs --refresh`` writes manifests, never moves a spider)."""
    keys = Keys(spider)
    if run is not None:
        await client.hsetnx(keys.runstores, run, store)
        had = _text(await client.hget(keys.runstores, run))
        if had != store:
            raise QueueError(
                f"run {run!r} of spider {spider!r} keeps its data in store {had}, not in this process's FLEET_STORE "
                f"({store}): run it with that FLEET_STORE (a relative file:// store is relative to the directory "
                "fleet runs in)")
    had = _text(await client.get(keys.store))
    if had == store:
        return
    if had is not None:
        busy, waiting = await _work(client, spider)
        if busy or waiting or not rebind:
            raise QueueError(
                f"spider {spider!r} writes to store {had} ({busy} request(s) queued, in flight, delayed or parked, "
                f"{waiting} worker(s) waiting), not to this process's FLEET_STORE ({store}): its objects and "
                "manifests would be split between the two. Use the same FLEET_STORE (a relative file:// store is "
                "relative to the directory fleet runs in), or move the spider's store once its work has drained")
    await client.set(keys.store, store)


async def _work(client: Redis, spider: str) -> tuple[int, int]:
    from scraper.queue.shards import open_queue  # the shards module imports this one's package

    q = await open_queue(client, spider)
    counts = await q.counts()
    busy = sum(int(counts.get(k, 0)) for k in ("ready", "inflight", "delayed", "parked"))
    return busy, len(await q.waiting_workers(time.time() - 1.0))


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value

"""Which object store a spider's processes write to, recorded in Redis so that no process writes elsewhere.

Why: a worker takes work from every run of its spider and writes it to its own ``FLEET_STORE``, whose default
(``file://./data``) is relative to the directory it was started in; the run manifest's completeness comes from
Redis. A `fleet run` in another directory therefore stored another run's items there while that run's manifest,
in the first store, said ``complete: true`` over an empty directory.

A worker records its store for the spider (``Keys.store``) and for each run (``Keys.runstores``) once it has
written there (``record_store``, from its first commit of the run): a store that never took an object (a wrong
FLEET_STORE fixed and redeployed) binds nothing. ``check_store``, before ``fleet run`` seeds and before a worker
starts, refuses a process whose store differs from the run's, or from the spider's while the spider has work
queued, in flight, delayed or parked or a worker waiting (an idle spider may move to another store).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from scraper.queue.keys import Keys, QueueError
from scraper.queue.redisio import REDIS_ERRORS
from scraper.queue.seedwire import text

__all__ = ["check_store", "record_store", "recorder", "run_stores"]


async def check_store(client: Redis, spider: str, store: str, *, run: str | None = None,
                      spider_too: bool = True) -> None:
    """Raise :class:`QueueError` with one line when another store holds ``run``'s data, or (``spider_too``) the
    spider's while it has work. ``store``: an identity from ``scraper.store.backends.store_identity``."""
    keys = Keys(spider)
    if run is not None:
        had = await client.hget(keys.runstores, run)
        if had is not None and text(had) != store:
            raise QueueError(
                f"run {run!r} of spider {spider!r} keeps its data in store {text(had)}, not in this process's "
                f"FLEET_STORE ({store}): run it with that FLEET_STORE (a relative file:// store is relative to the "
                "directory fleet runs in)")
    if not spider_too:
        return
    raw = await client.get(keys.store)
    had = None if raw is None else text(raw)
    if had is None or had == store:
        return
    busy, waiting = await _work(client, spider)
    if busy or waiting:
        raise QueueError(
            f"spider {spider!r} writes to store {had} ({busy} request(s) queued, in flight, delayed or parked, "
            f"{waiting} worker(s) waiting), not to this process's FLEET_STORE ({store}): its objects and "
            "manifests would be split between the two. Use the same FLEET_STORE (a relative file:// store is "
            "relative to the directory fleet runs in), or move the spider's store once its work has drained")


async def record_store(client: Redis, spider: str, store: str, run: str) -> None:
    """``store`` holds data of ``spider``'s ``run`` now: the spider's store, and the run's if it had none."""
    keys = Keys(spider)
    await client.hsetnx(keys.runstores, run, store)
    await client.set(keys.store, store)


def recorder(client: Redis, spider: str, store: str) -> Callable[[str], Awaitable[None]]:
    """``record_store`` once per run for one worker process (its committer calls it before each commit batch);
    a Redis error leaves the run to the next batch."""
    recorded: set[str] = set()

    async def record(run: str) -> None:
        if run in recorded:
            return
        try:
            await record_store(client, spider, store, run)
        except REDIS_ERRORS:
            return
        recorded.add(run)

    return record


async def _work(client: Redis, spider: str) -> tuple[int, int]:
    from scraper.queue.shards import open_queue  # the shards module imports this one's package

    q = await open_queue(client, spider)
    counts = await q.counts()
    busy = sum(int(counts.get(k, 0)) for k in ("ready", "inflight", "delayed", "parked"))
    return busy, len(await q.waiting_workers(time.time() - 1.0))


async def run_stores(client: Redis, spider: str, runs: list[str]) -> dict[str, str | None]:
    """Where each of ``runs`` keeps its data: its own record, else the spider's (a run worked before runs had
    records), else None (nothing recorded: no worker has written for the spider)."""
    keys = Keys(spider)
    own = {text(k): text(v) for k, v in (await client.hgetall(keys.runstores)).items()}
    raw = await client.get(keys.store)
    default = None if raw is None else text(raw)
    return {run: own.get(run) or default for run in runs}

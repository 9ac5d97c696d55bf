"""The keeper: heartbeats this worker's leases, reaps others' expired ones, and watches for idleness.

Why apart from the feeder: a worker that leases nothing (busy, stopping, store down) must still renew
what it holds, or the reaper hands its requests to another worker while they are being fetched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from scraper.infra import log as fleetlog
from scraper.worker.committer import Flags
from scraper.worker.feeder import Feeder
from scraper.worker.gate import Gate
from scraper.worker.health import REDIS_ERRORS, Health
from scraper.worker.ledger import Ledger
from scraper.worker.proxies import ProxyPool
from scraper.worker.queueport import QueuePort
from scraper.worker.tally import RunTally

__all__ = ["SHARDS_CHECK_SECONDS", "Keeper"]

SHARDS_CHECK_SECONDS = 2.0  # how often the recorded shard count is compared with this worker's (one GET)


class Keeper:
    def __init__(self, ledger: Ledger, health: Health, flags: Flags, feeder: Feeder, *, lease_seconds: float,
                 until_idle: float | None, stats: Any, log: Any, kick: Callable[[], None],
                 committing: Callable[[], bool]) -> None:
        self.ledger = ledger
        self.health = health
        self.flags = flags
        self.feeder = feeder  # shares the time of the last beat and the idle clock with it
        self.lease_seconds = lease_seconds
        self.until_idle = until_idle
        self.stats = stats
        self.log = log
        self.kick = kick
        self.committing = committing  # commits not yet sent
        self.queue: QueuePort | None = None  # set when the spider opens
        self.proxies: ProxyPool = ProxyPool([])
        self.tally: RunTally | None = None  # the finisher's per-run counts, flushed from this loop
        self.gate: Gate | None = None  # the politeness gate: permits renewed and swept, waiting reported
        self._shards_checked = 0.0  # when shards_changed last ran

    async def beat(self) -> None:
        queue = self.queue
        assert queue is not None
        self.feeder.last_beat = time.monotonic()
        lost = await queue.heartbeat(self.ledger.leases(), self.lease_seconds)
        for lid in lost:
            if not self.ledger.holds(lid):
                continue  # acknowledged while the heartbeat was on the wire
            self.stats.inc_value("fleet/lease_lost")
            self.log.warning("lease_lost", lease=lid)

    async def release(self, leases: list[tuple[str, str]]) -> None:
        """Hand leases back to READY at once (the buffer on shutdown; a claim confirmed after it)."""
        queue = self.queue
        assert queue is not None
        n = await self.health.redis_retry(lambda: queue.release(leases))
        self.stats.inc_value("fleet/released", n or 0)
        self.log.info("leases_released", count=n, reason="shutdown", buffered=True)

    async def release_all(self, reason: str) -> None:
        """Every lease not acknowledged goes back to the front of READY now, not at expiry."""
        leftovers = self.ledger.leases()
        self.ledger.buffer.clear()
        self.ledger.waiting.clear()
        if not leftovers or self.queue is None:
            return
        try:
            n = await self.queue.release(leftovers)
            self.stats.inc_value("fleet/released", n)
            self.log.info("leases_released", count=n, reason=reason)
        except REDIS_ERRORS as exc:
            self.log.warning("leases_not_released", count=len(leftovers), error=type(exc).__name__)

    def reaped(self, reaped: list[tuple[str, str]]) -> None:
        for lid, owner in reaped:
            self.stats.inc_value("fleet/reaped")
            self.log.warning("lease_expired", lease=lid, owner=owner)

    def idle_for(self) -> float | None:
        """Seconds READY, IN-FLIGHT and DELAYED have been empty with nothing held here (None: not idle)."""
        since = self.feeder.idle_since
        return None if since is None else time.monotonic() - since

    async def run(self) -> None:
        queue = self.queue
        assert queue is not None
        beat_every = max(0.05, self.lease_seconds / 3)
        feeder = self.feeder
        while not self.flags.releasing:
            await asyncio.sleep(min(0.5, beat_every))
            fleetlog.flush()
            touched = False
            try:
                if time.monotonic() - feeder.last_beat >= beat_every:
                    await self.beat()
                    _, reaped = await queue.maintain()
                    self.reaped(reaped)
                    touched = True
                    if self.gate is not None:
                        await self.gate.tick()
                if time.monotonic() - self._shards_checked >= min(SHARDS_CHECK_SECONDS, beat_every):
                    # a worker whose FLEET_QUEUE_SHARDS is no longer the spider's stops before it routes much
                    # more work by the old count (what it left is worked off: scraper/queue/shardlease.py)
                    self._shards_checked = time.monotonic()
                    changed = await queue.shards_changed()  # not `touched`: it proves shard 0's primary only
                    if changed:
                        self.health.config_fatal(changed)
                if self.proxies:
                    await self.proxies.flush()
                if self.tally is not None and self.tally.due():
                    await self.tally.flush()
                    touched = True
                if self.until_idle is not None:
                    pending = await queue.pending()
                    touched = True
                    if pending == 0 and not self.ledger.held() and not self.committing():
                        if feeder.idle_since is None:
                            feeder.idle_since = time.monotonic()
                        elif time.monotonic() - feeder.idle_since >= self.until_idle:
                            self.kick()
                    else:
                        feeder.idle_since = None
                if touched:  # only a Redis call that succeeded proves Redis is back
                    self.health.redis_ok()
            except REDIS_ERRORS as exc:
                await self.health.redis_trouble(exc)

"""Riding out Redis and object-store outages: when to wait, when to give up (exit 3).

Why one component: both outages end the same way (past their limit the worker gives up, with a one-line
reason and exit code 3, and releases what it holds), and the rest of the worker only asks two questions:
"is it fatal?" and "retry this Redis call until it works or is fatal".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from scraper.infra.config import FleetConfig
from scraper.queue.redisio import REDIS_ERRORS
from scraper.store import health as storehealth

if TYPE_CHECKING:
    from scraper.worker.ledger import LeaseState

__all__ = ["REDIS_ERRORS", "Health"]


T = TypeVar("T")


class Health:
    """Redis and store outage state. ``fatal`` (the one-line reason) and ``exit_code`` are what the CLI
    reports; ``stop`` is called once when an outage outlasts its limit."""

    def __init__(self, config: FleetConfig, log: Any, stats: Any, stop: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.stats = stats
        self.stop = stop
        self.fatal: str | None = None
        self.exit_code = 0
        self.redis_down_since: float | None = None
        self.store_outage = storehealth.StoreOutage(config.store_outage_max)
        # requests whose objects a store outage refused: written again once it is back, released at exit
        self.store_held: list[LeaseState] = []
        self._store_probe: asyncio.Future[BaseException | None] | None = None  # the probe write in flight

    # -- redis ------------------------------------------------------------------------------------

    async def redis_trouble(self, exc: BaseException) -> None:
        """A Redis call failed: log the outage's start, give up past FLEET_REDIS_OUTAGE_MAX, and back
        off (capped exponential) before the caller tries again."""
        now = time.monotonic()
        if self.redis_down_since is None:
            self.redis_down_since = now
            self.log.warning("redis_unavailable", error=type(exc).__name__)
        elif now - self.redis_down_since > self.config.redis_outage_max and not self.fatal:
            self.fatal = (
                f"Redis unreachable for more than {self.config.redis_outage_max:.0f}s "
                f"(FLEET_REDIS_OUTAGE_MAX); giving up. Check FLEET_REDIS_URL and the Redis server."
            )
            self.exit_code = 3
            self.log.error("redis_outage_exceeded", seconds=round(now - self.redis_down_since, 1))
            self.stop("redis_outage")
        await asyncio.sleep(min(2.0, 0.1 * (2 ** min(5, int(now - self.redis_down_since)))))

    def config_fatal(self, reason: str, event: str = "config_changed") -> None:
        """A configuration that cannot go on (the spider's FLEET_QUEUE_SHARDS changed under this worker; a
        scrapy-redis start key of the wrong type under ``--until-idle``): stop gracefully, leases released,
        exit 1 with ``reason`` as the one line, logged as ``event``."""
        if not self.fatal:
            self.fatal = reason
            self.exit_code = 1
            self.log.error(event, detail=reason)
            self.stop("config_changed")

    def redis_ok(self) -> None:
        if self.redis_down_since is not None:
            self.log.warning("redis_recovered", down_s=round(time.monotonic() - self.redis_down_since, 2))
            self.redis_down_since = None

    async def redis_retry(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op()`` until it succeeds; None once the outage is fatal (the leases then expire and another
        worker redoes the requests idempotently)."""
        while True:
            try:
                res = await op()
                self.redis_ok()
                return res
            except REDIS_ERRORS as exc:
                await self.redis_trouble(exc)
                if self.fatal:
                    return None

    # -- object store -----------------------------------------------------------------------------

    def store_trouble(self, exc: BaseException) -> None:
        """A probe write failed: the store itself is down (or refuses us). Counted and logged with the
        reason (redacted) when the outage starts; the feeder leases nothing until it is back."""
        if self.store_outage.begin(exc):
            self.stats.inc_value("fleet/store/outages")
            self.log.warning("store_unavailable", error=type(exc).__name__, reason=self.store_outage.reason,
                             outage_max_s=self.store_outage.limit)
        self.stats.inc_value("fleet/store/probes_failed")

    async def check_store(self, probe: Callable[[], Awaitable[Any]]) -> BaseException | None:
        """One probe write: None if the store took it, else its error. Concurrent callers share the
        probe in flight (eight failed S3 PUTs ask one question)."""
        if self._store_probe is None or self._store_probe.done():
            async def run() -> BaseException | None:
                try:
                    await probe()
                    return None
                except Exception as exc:
                    return exc
            self._store_probe = asyncio.ensure_future(run())
        return await asyncio.shield(self._store_probe)

    async def probe_store(self, probe: Callable[[], Awaitable[Any]]) -> list[LeaseState] | None:
        """While the store is down, lease nothing: every fetch would fail and burn A budgets. Past
        FLEET_STORE_OUTAGE_MAX the worker gives up (exit 3); close() releases every lease it holds.
        Returns the held requests to write again once the store is back (else None)."""
        await asyncio.sleep(1.0)
        exc = await self.check_store(probe)
        if exc is not None:
            self.store_trouble(exc)
            if self.store_outage.exceeded() and not self.fatal:
                outage = self.store_outage
                self.fatal = (
                    f"object store unavailable for more than {outage.limit:.0f}s (FLEET_STORE_OUTAGE_MAX): "
                    f"{outage.reason[:200]}; giving up. Check FLEET_STORE, its credentials and free space."
                )
                self.exit_code = 3
                self.log.error("store_outage_exceeded", seconds=round(outage.elapsed(), 1), reason=outage.reason,
                               probes_failed=outage.probes_failed, held=len(self.store_held))
                self.stop("store_outage")
            return None
        if not self.store_outage.down:
            return None
        down = self.store_outage.end()
        self.log.warning("store_recovered", down_s=round(down, 2), held=len(self.store_held))
        held, self.store_held = self.store_held, []
        return held

"""A worker's side of ``fleet cancel``: learn which runs were cancelled and drop what it holds of them.

Why the worker drops and not the cancel command: the leases of a run being fetched belong to the workers
fetching them; taking them away in Redis would only make each worker's later commit fail, after it had
written the objects anyway. Instead a worker polls the cancelled runs (one ``HKEYS`` every
``POLL_SECONDS``) and, for a run it learns of:

* buffered leases of the run (not yet handed to Scrapy) are acknowledged at once, unfetched;
* a lease of the run being fetched is let finish its fetch (bounded by its download timeout) and is then
  acknowledged instead of settled: no object, no children, no retry, no DLQ entry, no parking
  (``dropped`` on the ok path, ``confirmed`` on every failure path of ``FailureApplier``).

Acknowledged with ``COMMIT``, which for a cancelled run records no DONE and queues nothing: the entry is
forgotten, nothing stays IN-FLIGHT. In the moment between the mark and the poll, the queue scripts
already refuse the run's children, DONE, retries and DLQ entries (scraper/queue/cancel.py); only an
object whose write started before the worker learned of the cancel can still appear.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from scraper.queue.cancel import cancelled_runs
from scraper.queue.client import Commit, Keys
from scraper.worker.committer import Flags
from scraper.worker.health import REDIS_ERRORS, Health
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.queueport import QueuePort

if TYPE_CHECKING:
    from scraper.worker.gate import Gate

__all__ = ["POLL_SECONDS", "Cancels"]

POLL_SECONDS = 0.5  # how late a worker may learn of a cancel (one small HKEYS per poll)


class Cancels:
    def __init__(self, ledger: Ledger, health: Health, flags: Flags, *,
                 confirmed: Callable[[LeaseState], Awaitable[bool]], spawn: Callable[[Any], None],
                 stats: Any, log: Any) -> None:
        self.ledger = ledger
        self.health = health
        self.flags = flags
        self._confirmed = confirmed  # a speculative lease's confirmation (Speculation.confirmed)
        self.spawn = spawn
        self.stats = stats
        self.log = log
        self.runs: set[str] = set()
        self.queue: QueuePort | None = None  # set when the spider opens
        self.gate: Gate | None = None  # the politeness gate, when the spider has one (its waiting requests)

    def dropped(self, state: LeaseState) -> bool:
        """True (and the lease acknowledged soon) when ``state``'s run was cancelled: the ok path stops."""
        if not self.runs or state.env.run not in self.runs:
            return False
        self.spawn(self.drop(state))
        return True

    async def confirmed(self, state: LeaseState) -> bool:
        """``Speculation.confirmed`` for the failure paths, False (lease dropped) for a cancelled run."""
        if not await self._confirmed(state):
            return False
        if self.runs and state.env.run in self.runs:
            await self._ack(state)
            return False
        return True

    async def drop(self, state: LeaseState) -> None:
        if await self._confirmed(state):
            await self._ack(state)

    async def _ack(self, state: LeaseState) -> None:
        queue = self.queue
        assert queue is not None
        env = state.env
        # COMMIT of a cancelled run only acknowledges (no DONE, no children): see lua/commit.lua
        await self.health.redis_retry(lambda: queue.commit([Commit(state.id, state.lease.token, env.run, env.fp)]))
        self.ledger.forget(state)
        self.stats.inc_value("fleet/cancelled_dropped")
        self.log.info("request_cancelled", run=state.env.run, fp=state.env.fp)

    def learn(self, runs: set[str]) -> None:
        """New cancelled runs: log them and drop their buffered leases now."""
        new = runs - self.runs
        if not new:
            return
        self.runs |= new
        for run in sorted(new):
            self.log.warning("run_cancelled", run=run)
        buffer = self.ledger.buffer
        for state in [s for s in buffer if s.env.run in new]:
            buffer.remove(state)
            state.settled = True
            self.spawn(self.drop(state))
        waiting = [s for s in self.ledger.waiting.values() if s.env.run in new]
        if waiting and self.gate is not None:  # waiting at the politeness gate: dropped unfetched too
            self.gate.forget(waiting)
            for state in waiting:
                state.settled = True
                self.spawn(self.drop(state))

    async def run(self, client: Any, keys: Keys) -> None:
        while not self.flags.releasing:
            try:
                self.learn(await cancelled_runs(client, keys))
            except REDIS_ERRORS:
                pass  # the feeder and keeper report Redis trouble; the next poll tries again
            await asyncio.sleep(POLL_SECONDS)

"""Crash points for ``fleet smoke``: SIGKILL the worker at a chosen step, injected from outside.

Why injected: the smoke test proves a worker killed right after its objects are durable (``after_write``)
or right after DONE is recorded but before the ack (``after_done``) loses nothing. The hooks wrap the
queue port and the durability sink when FLEET_TEST_CRASH_AT names a point (scraper.worker.runtime reads it once
at start); otherwise nothing is wrapped and the hot path has no test code in it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

from scraper.queue.client import Commit, CommitReply
from scraper.worker.ledger import LeaseState
from scraper.worker.queueport import QueuePort
from scraper.worker.sinks import Sink, WriteResult

__all__ = ["POINTS", "CrashAfterDone", "CrashAfterWrite", "install"]

POINTS = ("after_write", "after_done")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashAfterWrite:
    """A sink that dies once a batch holds a durable object, before anything is committed."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.width, self.size = inner.width, inner.size

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def stage(self, state: LeaseState) -> WriteResult | None:
        return self.inner.stage(state)

    async def durable(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> list[WriteResult]:
        results = await self.inner.durable(batch)
        if any(exc is None for _, exc in results):
            _die()
        return results


class CrashAfterDone:
    """A queue that records DONE without the acks for a batch that finishes requests, then dies."""

    def __init__(self, inner: QueuePort) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit_claiming(self, commits: Sequence[Commit], *, ack: bool = True, worker: str = "",
                              lease_seconds: float = 0.0, nonce: str = "") -> CommitReply:
        if any(c.done for c in commits):
            await self.inner.commit(commits, ack=False)
            _die()
        return await self.inner.commit_claiming(commits, ack=ack, worker=worker, lease_seconds=lease_seconds,
                                                nonce=nonce)


def install(point: str, queue: QueuePort, sink: Sink) -> tuple[QueuePort, Sink]:
    """The queue and sink to use for crash point ``point`` ('' or unknown: unchanged)."""
    if point == "after_write":
        return queue, CrashAfterWrite(sink)
    if point == "after_done":
        return CrashAfterDone(queue), sink
    return queue, sink

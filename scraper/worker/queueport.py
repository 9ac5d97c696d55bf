"""The queue port (scraper.worker.queueport): exactly the queue operations the worker's components call.

Why a Protocol: the components (feeder, keeper, committer, failure applier) depend on these methods,
not on Redis; :class:`scraper.queue.client.FleetQueue` is the production implementation, and the core unit tests
(tests/unit/test_core_*.py) run the components against an in-memory one. A crash-point wrapper
(scraper.worker.crashpoints) is a third.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from scraper.queue.client import Commit, CommitReply, GateReply, LeaseBatch
from scraper.queue.envelope import Envelope

__all__ = ["QueuePort"]


class QueuePort(Protocol):
    async def lease(self, n: int, *, worker: str, lease_seconds: float, maintain_limit: int = 100) -> LeaseBatch: ...

    async def heartbeat(self, leases: Iterable[tuple[str, str]], lease_seconds: float) -> list[str]: ...

    async def maintain(self, limit: int = 500) -> tuple[int, list[tuple[str, str]]]: ...

    async def pending(self) -> int: ...

    async def commit(self, commits: Sequence[Commit], *, ack: bool = True
                     ) -> tuple[list[int], list[tuple[str, str]], list[bool]]: ...

    async def commit_claiming(self, commits: Sequence[Commit], *, ack: bool = True, worker: str = "",
                              lease_seconds: float = 0.0, nonce: str = "") -> CommitReply: ...

    async def nack(self, lease_id: str, token: str, env: Envelope, due: float) -> bool: ...

    async def release(self, leases: Iterable[tuple[str, str]]) -> int: ...

    async def dead(self, lease_id: str, token: str, fields: dict[str, str], *, maxlen: int = 100_000) -> bool: ...

    async def drift(self, lease_id: str, token: str, domain: str, sample: dict[str, Any],
                    run: str) -> tuple[str, str]: ...

    async def hold(self, domain: str, *, base: float, cap: float, rnd: float, min_wait: float = 0.0) -> float: ...

    async def breakers(self) -> dict[str, dict[str, Any]]: ...

    async def gate(self, domain: str, ids: Sequence[str], *, limit: int, spacing: float, burst: int,
                   aimd: bool, start: float, wmax: int, ttl: float, ahead: float = 0.0) -> GateReply: ...

    async def ungate(self, entries: Sequence[tuple[str, str, int, str]], ttl: float) -> int: ...

    async def report_waiting(self, worker: str, counts: dict[str, int]) -> None: ...

    async def seed(self, run: str, envelopes: Iterable[Envelope], *, batch: int = 2000) -> tuple[int, int]: ...

    async def seen(self, run: str, fps: Sequence[str]) -> list[bool]: ...

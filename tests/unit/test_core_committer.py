"""Committer ordering and durability against an in-memory queue port and a memory sink (no Redis).

* children are queued (their own COMMIT, done=False) before the parent's DONE + ack;
* a speculative child's claim is answered by that children COMMIT, before anything settles;
* an object is acknowledged only after its sink said durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

from scraper.infra.config import FleetConfig
from scraper.queue.client import Commit, CommitReply, Lease
from scraper.queue.envelope import Envelope
from scraper.worker.breakers import Breakers
from scraper.worker.committer import Committer, Flags
from scraper.worker.health import Health
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.sinks import Durability, WriteResult

STATS = SimpleNamespace(inc_value=lambda *a, **k: None)
LOG = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None, error=lambda *a, **k: None)


class MemoryQueue:
    """The part of the queue port the committer calls: records every COMMIT, claims what it is asked."""

    def __init__(self) -> None:
        self.calls: list[list[Commit]] = []

    async def commit_claiming(self, commits: Sequence[Commit], *, ack: bool = True, worker: str = "",
                              lease_seconds: float = 0.0, nonce: str = "") -> CommitReply:
        self.calls.append(list(commits))
        return CommitReply([len(c.discovered) for c in commits], [], [c.done for c in commits],
                           [("tok", 1) if c.claim else ("", 0) for c in commits])

    async def release(self, leases: Iterable[tuple[str, str]]) -> int:
        return 0


class MemorySink:
    """Durable when the test says so."""

    width, size = 1, 10

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.staged: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stage(self, state: LeaseState) -> WriteResult | None:
        self.staged.append(state.id)
        return None

    async def durable(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> list[WriteResult]:
        await self.gate.wait()
        return [(f"items/{st.id}", None) for st, _ in batch]


def env(url: str = "https://a.example/") -> Envelope:
    return Envelope(url=url, spider="s", run="r", fp="0123456789abcdef")


def make() -> tuple[Committer, MemoryQueue, Ledger]:
    config = FleetConfig.from_env()
    ledger = Ledger()
    health = Health(config, LOG, STATS, lambda reason: None)
    breakers = Breakers(SimpleNamespace(send=lambda a: None), STATS, LOG, lambda c: None)  # type: ignore[arg-type]
    committer = Committer(config, "w1", ledger, health, Flags(), breakers, STATS, LOG, lambda: None, lambda: None,
                          lambda st: "")
    queue = MemoryQueue()
    committer.queue = queue
    return committer, queue, ledger


def parent(ledger: Ledger) -> LeaseState:
    st = LeaseState(Lease("p", b"", 1, "tp"), env())
    ledger.active["p"] = st
    st.out.discovered.append(env("https://a.example/2"))
    st.out.discovered_ids.append("c1")
    return st


def test_children_are_queued_before_done_and_ack() -> None:
    async def go() -> None:
        committer, queue, ledger = make()
        st = parent(ledger)
        st.progress.children_pending = True
        committer.written(st, "")  # objects durable first: the commit waits for the children
        assert committer.commits == []
        await committer.queue_children(st, lambda spec: None)
        assert [c.done for c in queue.calls[0]] == [False]
        assert [c.lease_id for _, c in committer.commits] == ["p"]  # only now
        await committer.flush()
        assert [c.done for c in queue.calls[1]] == [True]
        assert "p" not in ledger.active
    asyncio.run(go())


def test_speculative_claim_is_confirmed_by_the_children_commit() -> None:
    async def go() -> None:
        committer, queue, ledger = make()
        st = parent(ledger)
        st.progress.children_pending = True
        spec = LeaseState(Lease("c1", b"", 1, ""), st.out.discovered[0], None,
                          asyncio.get_running_loop().create_future())
        ledger.buffer.append(spec)
        st.progress.spec, st.progress.spec_index = spec, 1
        answered: list[tuple[str, int]] = []

        def answer(s: LeaseState, token: str, deliveries: int) -> None:
            answered.append((token, deliveries))
            assert s.claim is not None
            s.claim.set_result(True)
            s.claim = None
        committer.claim_answered = answer
        await committer.queue_children(st, lambda s: None)
        assert queue.calls[0][0].claim == 1 and answered == [("tok", 1)]
        assert st.progress.spec is None  # the parent lets go of its child
    asyncio.run(go())


def test_object_acknowledged_only_after_the_sink_said_durable() -> None:
    async def go() -> None:
        committer, queue, ledger = make()
        sink = MemorySink()
        tasks: list[asyncio.Task[Any]] = []

        async def answered(batch: list[tuple[LeaseState, WriteResult | None]], results: list[WriteResult]) -> None:
            for (st, _), (_key, exc) in zip(batch, results, strict=True):
                assert exc is None
                committer.written(st, "")
        durability = Durability(sink, lambda c: tasks.append(asyncio.ensure_future(c)), answered)
        st = LeaseState(Lease("x", b"", 1, "tx"), env())
        ledger.active["x"] = st
        st.out.items.append({"a": 1})
        durability.queue(st)
        await asyncio.sleep(0.01)
        assert sink.staged == ["x"] and committer.commits == [] and durability.busy()
        sink.gate.set()
        await asyncio.gather(*tasks)
        assert [c.lease_id for _, c in committer.commits] == ["x"] and not durability.busy()
        await committer.flush()
        assert queue.calls[-1][0].done and "x" not in ledger.active
    asyncio.run(go())


def test_a_page_of_many_children_is_queued_in_calls_redis_takes() -> None:
    """Probe: a page of 215,000 links made one COMMIT of over 1,048,576 arguments, which Redis refuses by closing
    the connection; Fleet retried it for ever. Now CHILDREN_PER_CALL children a call: the hops with the first, the
    claim (its index within the call) with the call holding its child, the parent's DONE only after the last."""
    from scraper.worker import committer as committer_mod

    async def go() -> None:
        committer, queue, ledger = make()
        st = parent(ledger)
        n = 2 * committer_mod.CHILDREN_PER_CALL + 5
        st.out.discovered[:] = [env(f"https://a.example/{i}") for i in range(n)]
        st.out.discovered_ids[:] = [f"c{i}" for i in range(n)]
        st.fetch.hops = ["00000000000000aa"]
        spec = LeaseState(Lease(f"c{n - 2}", b"", 1, ""), st.out.discovered[n - 3], None,
                          asyncio.get_running_loop().create_future())
        st.progress.spec, st.progress.spec_index = spec, n - 2  # in the third call, its 3rd child
        committer.claim_answered = lambda s, token, deliveries: None
        st.progress.children_pending = True
        committer.written(st, "")
        await committer.queue_children(st, lambda s: None)
        calls = [c for (c,) in queue.calls]
        assert [len(c.discovered) for c in calls] == [committer_mod.CHILDREN_PER_CALL] * 2 + [5]
        assert [c.ids[0] for c in calls] == ["c0", f"c{committer_mod.CHILDREN_PER_CALL}",
                                             f"c{2 * committer_mod.CHILDREN_PER_CALL}"]
        assert [c.claim for c in calls] == [0, 0, 3] and [c.outcome for c in calls] == ["h", "", ""]
        assert [len(c.hops) for c in calls] == [1, 0, 0] and not any(c.done for c in calls)
        assert st.progress.enqueued == n and [c.lease_id for _, c in committer.commits] == ["p"]
    asyncio.run(go())

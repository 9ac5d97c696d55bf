"""The reads of a spider split into shards (scraper.queue.shards): counts, runs, backlog, breakers and the
DLQ summed or merged over the shards (and over the shards of the counts it had before), so status,
metrics, manifests and the on-call commands see the whole spider. A mixin of
:class:`scraper.queue.shards.ShardedQueue`."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from scraper.queue.client import FleetQueue
from scraper.queue.keys import QueueError, shard_of

__all__ = ["ShardedReads", "gather_all", "gather_each", "shares", "split_by"]

T = TypeVar("T")
_ORDER = {"closed": 0, "half_open": 1, "open": 2}  # a domain's state over its shards: the worst one


def _past(state: str, now: float) -> bool:
    """Whether a ``brk`` value (``open|<until>`` / ``half|<until>``) has run out."""
    try:
        return float(state.split("|", 1)[1]) < now
    except (IndexError, ValueError):
        return False


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run the shards' calls at once (on a cluster: each on its own primary)."""
    return list(await asyncio.gather(*aws))


async def gather_each(aws: Iterable[Awaitable[T]]) -> list[T | Exception]:
    """:func:`gather_all`, but a call that failed gives its exception in its place, so one sick shard does not
    cost the others' results; anything that is not an Exception (a cancellation) is raised."""
    got = await asyncio.gather(*aws, return_exceptions=True)
    for r in got:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r
    return list(got)  # type: ignore[arg-type]  # BaseException ruled out above


def split_by(items: Iterable[T], shard: Callable[[T], int], width: int) -> list[list[T]]:
    """``items`` in ``width`` lists, one per shard, in their order; ``shard`` says each one's."""
    out: list[list[T]] = [[] for _ in range(width)]
    for x in items:
        out[shard(x)].append(x)
    return out


def shares(total: int, shards: list[int]) -> dict[int, int]:
    """``total`` split between ``shards`` as evenly as whole numbers go, the first ones taking the rest."""
    q, r = divmod(total, len(shards))
    return {s: q + (1 if j < r else 0) for j, s in enumerate(shards)}


class ShardedReads:
    """Reads over ``parts``, the spider's shards in order."""

    parts: list[FleetQueue]  # the shards work goes to, in shard order
    # parts, then the shards of the counts the spider had before (open_queue): a change of count leaves their
    # DLQ entries, SEEN/DONE counts, runs and breakers where they were, and every read still sees them
    read_parts: list[FleetQueue]
    spider: str

    async def seen(self, run: str, fps: Sequence[str]) -> list[bool]:
        k = len(self.parts)
        split = split_by(range(len(fps)), lambda i: shard_of(fps[i], k), k)
        out = [False] * len(fps)
        got = await gather_all(p.seen(run, [fps[i] for i in ix]) for p, ix in zip(self.parts, split, strict=True))
        for ix, flags in zip(split, got, strict=True):
            for i, f in zip(ix, flags, strict=True):
                out[i] = f
        return out

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in await gather_all(p.counts() for p in self.read_parts):
            for name, v in c.items():
                out[name] = out.get(name, 0) + v
        return out

    async def shard_counts(self) -> list[dict[str, int]]:
        """``counts`` of each shard, in shard order (how evenly the work splits)."""
        return await gather_all(p.counts() for p in self.parts)

    async def waiting_workers(self, since: float) -> set[str]:
        return set().union(*await gather_all(p.waiting_workers(since) for p in self.read_parts))

    async def pending(self) -> int:
        return sum(await gather_all(p.pending() for p in self.read_parts))

    async def parked(self) -> int:
        return sum(await gather_all(p.parked() for p in self.read_parts))

    async def runs(self) -> dict[str, dict[str, int]]:
        # a shard lists the runs seeded into it; children reach every shard, so each is asked for all
        names = sorted(await self.run_times())
        out: dict[str, dict[str, int]] = {}
        for r in await gather_all(p.run_counts(names) for p in self.read_parts):
            for run, c in r.items():
                t = out.setdefault(run, {"seen": 0, "done": 0})
                t["seen"] += c["seen"]
                t["done"] += c["done"]
        return out

    async def run_backlog(self, run: str) -> dict[str, int] | None:
        out: dict[str, int] = {}
        for b in await gather_all(p.run_backlog(run) for p in self.read_parts):
            if b is None:
                return None
            for kind, v in b.items():
                out[kind] = out.get(kind, 0) + v
        return out

    async def run_times(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in await gather_all(p.run_times() for p in self.read_parts):
            for run, t in r.items():
                out[run] = min(t, out.get(run, t))
        return out

    async def first_seen(self, run: str) -> float | None:
        ts = [t for t in await gather_all(p.first_seen(run) for p in self.read_parts) if t is not None]
        return min(ts) if ts else None

    async def breaker_states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        now = time.time()
        for i, states in enumerate(await gather_all(p.breaker_states() for p in self.read_parts)):
            for domain, v in states.items():
                if i >= len(self.parts) and _past(v, now):
                    continue  # a shard of an earlier count: no LEASE moves its breakers on, its deadline is over
                have = out.get(domain)
                if have is None or (v.startswith("open") and not have.startswith("open")):
                    out[domain] = v
        return out

    async def breakers(self) -> dict[str, dict[str, Any]]:
        """Each domain's breaker over the shards: the worst state, windows and counts added, the latest
        samples; ``shards`` gives each shard's state."""
        out: dict[str, dict[str, Any]] = {}
        now = time.time()
        for i, br in enumerate(await gather_all(p.breakers() for p in self.read_parts)):
            for domain, b in br.items():
                if i >= len(self.parts) and (b["state"] == "closed" or (b["open_until"] or 0) < now):
                    continue  # a shard of an earlier count: only a breaker still open there counts
                have = out.get(domain)
                if have is None:
                    have = out[domain] = dict(b, shards=["closed"] * len(self.read_parts))
                else:
                    if _ORDER.get(b["state"], 0) > _ORDER.get(have["state"], 0):
                        have["state"] = b["state"]
                    for f in ("window", "c_events", "drift_events", "parked"):
                        have[f] += b[f]
                    have["trips"] = max(have["trips"], b["trips"])
                    for f, pick in (("opened_at", min), ("open_until", max)):
                        vals = [v for v in (have[f], b[f]) if v is not None]
                        have[f] = pick(vals) if vals else None
                    have["samples"] = (have["samples"] + b["samples"])[-5:]
                    have["c_rate"] = round(have["c_events"] / have["window"], 3) if have["window"] else 0.0
                have["shards"][i] = b["state"]
        return out

    async def dlq_iter(self, run: str | None = None) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """The shards' DLQ entries merged newest first; an id is ``<shard>/<stream id>`` (``dlq_delete``)."""
        its = [p.dlq_iter(run) for p in self.read_parts]
        heap: list[tuple[tuple[int, int], int, str, dict[str, str]]] = []

        async def pull(i: int) -> None:
            try:
                rid, f = await its[i].__anext__()
            except StopAsyncIteration:
                return
            ms, _, seq = rid.partition("-")
            heapq.heappush(heap, ((-int(ms), -int(seq or 0)), i, rid, f))

        for i in range(len(self.read_parts)):
            await pull(i)
        while heap:
            _, i, rid, f = heapq.heappop(heap)
            yield f"{i}/{rid}", f
            await pull(i)

    async def dlq_delete(self, ids: Sequence[str]) -> int:
        split: list[list[str]] = [[] for _ in self.read_parts]
        for x in ids:
            s, _, rid = x.partition("/")
            if not rid or not s.isdigit() or int(s) >= len(self.read_parts):
                raise QueueError(f"DLQ id {x!r} is not <shard>/<stream id> of a shard of {self.spider!r}")
            split[int(s)].append(rid)
        return sum(await gather_all(p.dlq_delete(rs) for p, rs in zip(self.read_parts, split, strict=True) if rs))


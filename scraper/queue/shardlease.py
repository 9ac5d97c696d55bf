"""Leasing from a spider split into shards, and where each leased entry is answered: a mixin of
:class:`scraper.queue.shards.ShardedQueue`.

Why its own module: which shard a lease asks, and which shard then hears of the entry (heartbeat, commit,
NACK, DEAD, RELEASE), is the one place where the router must keep state (the turn, the shards found empty
or failing, the entries found outside their id's shard), and the one place a sick primary can stall a
worker.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable

from scraper.queue.client import FleetQueue
from scraper.queue.keys import shard_of
from scraper.queue.records import LeaseBatch
from scraper.queue.shardreads import gather_each, shares, split_by

__all__ = ["DOWN_MAX_SECONDS", "DOWN_SECONDS", "EMPTY_SECONDS", "LEGACY_EMPTY_SECONDS", "ROUTE_MAX", "ShardedLeasing"]

EMPTY_SECONDS = 0.5  # a shard whose READY a lease emptied is asked after the others this long
LEGACY_EMPTY_SECONDS = 5.0  # a shard of an earlier count found empty is not asked again this long
DOWN_SECONDS = 2.0  # a shard whose LEASE failed is asked only when no other gives anything, this long
DOWN_MAX_SECONDS = 30.0  # ... doubled at each failure in a row, up to this
ROUTE_MAX = 100_000  # lease ids remembered outside their id's shard (shard()), oldest dropped first


class ShardedLeasing:
    """``parts``: the shards work goes to; ``read_parts``: those, then the shards of earlier counts."""

    parts: list[FleetQueue]
    read_parts: list[FleetQueue]
    #: called with (shard index, error) when a shard's LEASE fails and others answer (the runtime logs it)
    on_shard_error: Callable[[int, BaseException], None] | None

    def _leasing_init(self) -> None:
        total = len(self.read_parts)
        self._turn = 0  # which shard a lease asks first (rotates: no shard starves)
        self._empty_until = [0.0] * total  # per shard: until when it counts as just found empty
        self._down_until = [0.0] * total  # per shard: until when it counts as failing
        self._backlog = [0] * total  # per shard: READY's size at its last LEASE (the deficit goes there first)
        self._asked_at = [0.0] * total  # per shard: when a LEASE last asked it
        self._outage = [False] * total  # per shard: failing since its last answer (reported once)
        self._down_for = [DOWN_SECONDS] * total  # per shard: how long its next failure keeps it down
        # lease id -> index in read_parts of the shard it was leased from, for an entry that is not in its id's
        # shard (written by a process with another count, or left in a shard of an earlier count): answered
        # where it is, never stuck in flight
        self._route: collections.OrderedDict[str, tuple[int, str]] = collections.OrderedDict()  # id -> (shard, token)
        self.on_shard_error = None

    @property
    def n(self) -> int:
        return len(self.parts)

    def shard(self, lease_id: str) -> int:
        """Index in ``read_parts`` of an entry's shard: where it was leased from when that was not its id's
        shard, else its id's."""
        got = self._route.get(lease_id)
        return got[0] if got is not None else shard_of(lease_id, len(self.parts))

    def part(self, key: str) -> FleetQueue:
        """The shard of an entry id (or of a fingerprint: its id's shard)."""
        return self.read_parts[self.shard(key)]

    def _settled(self, leases: Iterable[tuple[str, str]]) -> None:
        """Forget the route of leases that ended (acked, released, NACKed, dead, parked, found lost): only
        under the token they had, since the same id may meanwhile have been leased again from where it is."""
        if self._route:
            for lid, token in leases:
                got = self._route.get(lid)
                if got is not None and got[1] == token:
                    del self._route[lid]

    def _by_shard(self, leases: Iterable[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        return split_by(leases, lambda x: self.shard(x[0]), len(self.read_parts))

    async def lease(self, n: int, *, worker: str, lease_seconds: float, maintain_limit: int = 100) -> LeaseBatch:
        """Up to ``n`` leases: the whole ask goes to one shard, the next in turn (one found empty in the last
        ``EMPTY_SECONDS`` or failing lately, see ``_lease_from``, goes after the others), and what it could
        not give is asked at once of the other shards, split between them; a share of 0 too (that LEASE
        maintains, reports its READY and lists the worker as waiting there when it is empty), and the
        shards of earlier counts not found empty lately (an entry a worker of another count left there is
        worked off). A failing shard is asked only when no other gave anything (so an idle worker still
        sees the outage); a sick primary costs the others neither leases nor time.

        Why one shard first and not an even split: a script call has a cost of its own, and an ask split
        over N shards is N calls of a few entries; a batch from one shard is also committed in that shard
        in one call. Why in turn: every shard is asked first every N calls, so none waits while others are
        drained, and each one's LEASE runs its maintenance (due retries, expired leases) as often."""
        k = len(self.parts)
        if k == 1 and len(self.read_parts) == 1:
            return await self.parts[0].lease(n, worker=worker, lease_seconds=lease_seconds,
                                             maintain_limit=maintain_limit)
        now = time.monotonic()
        start, self._turn = self._turn, (self._turn + 1) % k
        order = sorted(((start + j) % k for j in range(k)),
                       key=lambda s: (self._down_until[s] > now, self._empty_until[s] > now))
        legacy = [s for s in range(k, len(self.read_parts))
                  if self._empty_until[s] <= now and self._down_until[s] <= now]
        # a shard of an earlier count with work at its last LEASE, or not asked for LEGACY_EMPTY_SECONDS, is
        # asked first: what a worker of that count left there is worked off even while the shards of now
        # fill every ask
        due = [s for s in legacy if not self._outage[s]
               and (self._backlog[s] > 0 or now - self._asked_at[s] >= LEGACY_EMPTY_SECONDS)]
        if due:
            order = [due[0], *order]
            legacy = [s for s in legacy if s != due[0]]
        out = LeaseBatch()
        errors: list[Exception] = []
        first = order[0]
        await self._lease_from(out, [first], {first: n}, worker, lease_seconds, maintain_limit, errors)
        asked = {first}
        short = n - len(out.leased)
        if short > 0:
            # the shards that had the most work at their last LEASE first (a share smaller than the shards
            # asked must not always miss the same ones), in turn among equals
            rest = sorted([s for s in order[1:] if self._down_until[s] <= now] + legacy,
                          key=lambda s: -self._backlog[s])
            if rest:
                await self._lease_from(out, rest, shares(short, rest), worker, lease_seconds, maintain_limit, errors)
                asked |= set(rest)
            down = [s for s in [*order[1:], *range(k, len(self.read_parts))]
                    if s not in asked and self._empty_until[s] <= now]
            if down and not out.leased:
                await self._lease_from(out, down, shares(n, down), worker, lease_seconds, maintain_limit, errors)
                asked |= set(down)
        if errors and not out.leased:
            raise errors[0]
        unknown = [s for s in range(len(self.read_parts)) if s not in asked and self._empty_until[s] <= now]
        if errors or unknown:
            out.remaining += 1  # a shard not asked (or not answering) may hold work: READY is not known empty
        return out

    async def _lease_from(self, out: LeaseBatch, which: list[int], ask: dict[int, int], worker: str,
                          lease_seconds: float, maintain_limit: int, errors: list[Exception]) -> None:
        """Lease from ``which`` at once; a shard whose call failed goes into ``errors`` and counts as down
        (``DOWN_SECONDS``, doubled at each failure in a row up to ``DOWN_MAX_SECONDS``), the others' leases
        are kept (thrown away, they would wait out a lease period)."""
        got = await gather_each(
            self.read_parts[s].lease(ask[s], worker=worker, lease_seconds=lease_seconds, maintain_limit=maintain_limit)
            for s in which
        )
        k = len(self.parts)
        now = time.monotonic()  # after the calls: a call that hung must not come back already out of its window
        for s, b in zip(which, got, strict=True):
            self._asked_at[s] = now
            if isinstance(b, Exception):
                errors.append(b)
                if not self._outage[s] and self.on_shard_error is not None:
                    self.on_shard_error(s, b)  # once per outage: until the shard answers again
                self._outage[s] = True
                # down for a while, longer at each failure in a row: a primary that hangs (a socket timeout
                # of 5-10 s) is then waited for now and then, not at every turn of the rotation
                self._down_until[s] = now + self._down_for[s]
                self._down_for[s] = min(DOWN_MAX_SECONDS, self._down_for[s] * 2)
                continue
            self._down_until[s] = 0.0
            self._down_for[s] = DOWN_SECONDS
            self._outage[s] = False
            self._backlog[s] = b.remaining
            quiet = EMPTY_SECONDS if s < k else LEGACY_EMPTY_SECONDS
            self._empty_until[s] = now + quiet if b.remaining == 0 else 0.0
            for x in b.leased:
                if shard_of(x.id, k) != s:
                    if len(self._route) >= ROUTE_MAX:
                        self._route.popitem(last=False)
                    self._route[x.id] = (s, x.token)
                elif self._route:
                    self._route.pop(x.id, None)  # leased again where its id says: an old route is stale
            out.promoted += b.promoted
            out.reaped += b.reaped
            out.leased += b.leased
            out.skipped += b.skipped
            out.held += b.held
            out.parked += b.parked
            out.remaining += b.remaining
            out.cancelled += b.cancelled

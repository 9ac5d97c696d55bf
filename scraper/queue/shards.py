"""One spider's queue split into shards (``FLEET_QUEUE_SHARDS``): each a full queue under a hash tag of its own,
so on a Redis Cluster one spider's work spreads over several primaries (issue #18).

Why a router over whole shards rather than sharded scripts: every script stays single-slot and unchanged.
An entry lives in the shard of its fingerprint (``keys.shard_of``: SEEN, DONE, READY, IN-FLIGHT, DELAYED and
the envelope together, so SEEN/DONE stay exact and a seed or a lease is one call per shard), and its queue
id ends like its fingerprint (``keys.new_id``), so every call after the lease is routed by the id alone.
What crosses shards:

* **a commit's children** go to their own shards: the children of every commit of a batch are enqueued
  first, one COMMIT of children-only entries per shard that gets any (the parent's own included), and then
  each commit's DONE and ack in its own shard. A crash in between leaves the parent leased and its
  children queued: the redelivery finds them SEEN, as after a crash of the one-shard commit's early
  children call. A claimed child is claimed in its shard.
* **a redirect hop** is recorded in its shard with the children; for a strict acknowledgement, after the
  ack, and only when it was this worker's (a crash in between loses that hop's dedup, never a page).
* **per-domain state** each shard's LEASE and COMMIT read locally: holds (HOLD runs in every shard with the
  same arguments, so their steps agree; the latest deadline is the answer), cancel marks (``cancel``
  marks every shard), breakers (one per shard, fed by that shard's outcomes; an opening is mirrored into
  the others by BREAKER_TRIP, a reset resets all; a half-open shard probes for itself).
* **reads** (counts, runs, DLQ, breakers, parked) are summed or merged over the shards.

Shard 0 is the unsharded spider's queue (``fleet:{spider}:``); it also keeps what is the spider's alone:
the tallies, start-key staging, the gate and the shard count (``Keys.shards``), which ``open_queue``
checks so that workers, seeders and operator commands agree on it.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from scraper.queue import scripts as lua
from scraper.queue.client import FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.keys import MAX_SHARDS, Keys, QueueError, shard_of, stored_shards
from scraper.queue.records import BreakerParams, Commit, CommitReply, Lease
from scraper.queue.seedwire import text
from scraper.queue.shardlease import ShardedLeasing
from scraper.queue.shardplan import merge_replies, plan_commits
from scraper.queue.shardreads import ShardedReads, gather_all, gather_each, split_by

__all__ = ["ShardedQueue", "earlier_counts", "fleet_trips", "open_queue", "stored_shards"]

_SEED_CHUNK = 50_000  # rows split per shard at a time (memory bound for fleet seed of millions)


async def open_queue(
    client: aioredis.Redis,
    spider: str,
    *,
    shards: int | None = None,
    dedup_ttl: int = 48 * 3600,
    breaker: BreakerParams | None = None,
) -> FleetQueue:
    """The queue of ``spider``: a :class:`FleetQueue`, or a :class:`ShardedQueue` when it has shards.

    ``shards=None`` (operator commands: status, dlq, breakers, runs, cancel, metrics…): as many as Redis
    records. A number (workers and seeders, from FLEET_QUEUE_SHARDS): recorded when Redis has none; a
    different recorded count is replaced only while the spider has no work queued, in flight, delayed or
    parked and no worker waits for work, and is otherwise a :class:`QueueError` (its entries would be looked for
    in the wrong shards; a running worker keeps the count it started with, and would lease new entries from
    shard 0 and route their acks by id to other shards: lost acks until they are dead-lettered as poison).
    A waiting worker is one listed in WAITING within the last 2-3 s (lua/lease.lua; a stopped one takes
    itself off); the 1 s of slack allows for this host's clock being ahead of Redis's."""
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise QueueError(f"FLEET_QUEUE_SHARDS={shards}: use 1 to {MAX_SHARDS}")
    have = await stored_shards(client, spider)
    n = have if shards is None else shards
    if shards is not None and shards != have:
        # the shards of the recorded count and of earlier ones: a worker of another count may have left work
        old = _make(client, spider, have, dedup_ttl, breaker, await earlier_counts(client, spider, have))
        counts = await old.counts()
        busy = counts["ready"] + counts["inflight"] + counts["delayed"] + counts["parked"]
        live = len(await old.waiting_workers(time.time() - 1.0))
        if busy or live:
            raise QueueError(
                f"spider {spider!r} has its queue in {have} shard(s) with {busy} request(s) queued, in flight, "
                f"delayed or parked and {live} worker(s) waiting for work; FLEET_QUEUE_SHARDS={shards} would not "
                f"find them: set FLEET_QUEUE_SHARDS={have} until the queue is empty and its workers stopped"
            )
        swap = lua.Bound(client, "shards_set")
        if not int(await swap(Keys(spider).select(swap.meta.keys), [str(have), str(shards)])):
            raise QueueError(f"spider {spider!r}: its shard count changed meanwhile (another process with another "
                             f"FLEET_QUEUE_SHARDS); check what the spider's workers and seeders are set to")
    return _make(client, spider, n, dedup_ttl, breaker, await earlier_counts(client, spider, n))


async def earlier_counts(client: aioredis.Redis, spider: str, n: int) -> list[int]:
    """The shard counts ``spider``'s queue had before, other than ``n`` and 1 (whose one shard is shard 0)."""
    got = set()
    for raw in await client.smembers(Keys(spider).shardsets):
        t = text(raw)
        if t.isdigit() and 1 < int(t) <= MAX_SHARDS and int(t) != n:
            got.add(int(t))
    return sorted(got)


def _make(client: aioredis.Redis, spider: str, n: int, dedup_ttl: int, breaker: BreakerParams | None,
          older: Sequence[int] = ()) -> FleetQueue:
    if n == 1 and not older:
        return FleetQueue(client, spider, dedup_ttl=dedup_ttl, breaker=breaker)
    return ShardedQueue(client, spider, n, dedup_ttl=dedup_ttl, breaker=breaker, older=older)


def fleet_trips(windows: Sequence[str], params: BreakerParams) -> bool:
    """Whether a domain's outcome windows of all shards, taken as one window, trip its breaker: as many C
    outcomes as ``min_events``, and at least ``rate`` of all outcomes (lua/_helpers.lua: window_after)."""
    c = sum(w.count("C") for w in windows)
    n = sum(len(w) for w in windows)
    return n > 0 and c >= params.min_events and c / n >= params.rate


class ShardedQueue(ShardedLeasing, ShardedReads, FleetQueue):
    """A spider's queue in ``n`` shards; the same interface as :class:`FleetQueue`, whose own methods (the
    gate, keys of the spider alone) act on shard 0."""

    def __init__(
        self,
        client: aioredis.Redis,
        spider: str,
        n: int,
        *,
        dedup_ttl: int = 48 * 3600,
        breaker: BreakerParams | None = None,
        older: Sequence[int] = (),
    ) -> None:
        super().__init__(client, spider, dedup_ttl=dedup_ttl, breaker=breaker, shard=0, shards=n)
        self.parts = [
            FleetQueue(client, spider, dedup_ttl=dedup_ttl, breaker=breaker, shard=i, shards=n) for i in range(n)
        ]
        self.read_parts = list(self.parts)
        tags = {p.keys.prefix for p in self.parts}
        for m in older:  # the shards of earlier counts, for reads (ShardedReads.read_parts)
            for i in range(1, m):
                q = FleetQueue(client, spider, dedup_ttl=dedup_ttl, breaker=breaker, shard=i, shards=m)
                if q.keys.prefix not in tags:
                    tags.add(q.keys.prefix)
                    self.read_parts.append(q)
        self._trip = lua.Bound(client, "breaker_trip")
        self._leasing_init()

    # -- producers --------------------------------------------------------------------------------

    async def _seed_rows(self, run: str, rows: Iterable[tuple[str, str, str]], batch: int) -> tuple[int, int]:
        enq = skipped = 0
        it = iter(rows)
        while True:
            chunk = list(itertools.islice(it, _SEED_CHUNK))
            if not chunk:
                break
            split = split_by(chunk, lambda row: shard_of(row[1], self.n), self.n)
            parts = zip(self.parts, split, strict=True)
            for e, s in await gather_all(p._seed_rows(run, rs, batch) for p, rs in parts if rs):
                enq += e
                skipped += s
            if len(chunk) < _SEED_CHUNK:
                break
        return enq, skipped

    async def requeue(self, envelopes: Iterable[Envelope]) -> int:
        split = split_by(envelopes, lambda env: shard_of(env.fp, self.n), self.n)
        return sum(await gather_all(p.requeue(es) for p, es in zip(self.parts, split, strict=True) if es))

    # -- consumers --------------------------------------------------------------------------------

    async def maintain(self, limit: int = 500) -> tuple[int, list[tuple[str, str]]]:
        """MAINTAIN in every shard, those of earlier counts too (a worker of such a count that died left its
        leases there to reap, its retries to promote)."""
        promoted, reaped = 0, []
        errors: list[Exception] = []
        got = await gather_each(p.maintain(limit) for p in self.read_parts)
        for res in got:
            if isinstance(res, Exception):
                errors.append(res)  # one sick shard must not stop the keeper's beat for the others
                continue
            promoted += res[0]
            reaped += res[1]
        if errors and len(errors) == len(got):
            raise errors[0]
        return promoted, reaped

    async def heartbeat(self, leases: Iterable[tuple[str, str]], lease_seconds: float) -> list[str]:
        split = self._by_shard(leases)
        lost: list[str] = []
        parts = zip(self.read_parts, split, strict=True)
        for got in await gather_all(p.heartbeat(ls, lease_seconds) for p, ls in parts if ls):
            lost += got
        gone = set(lost)  # no longer this worker's: whoever leases it next learns where it is
        self._settled((lid, t) for ls in split for lid, t in ls if lid in gone)
        return lost

    async def ack(self, leases: Iterable[tuple[str, str]]) -> int:
        split = self._by_shard(leases)
        n = sum(await gather_all(p.ack(ls) for p, ls in zip(self.read_parts, split, strict=True) if ls))
        self._settled(x for ls in split for x in ls)
        return n

    async def release(self, leases: Iterable[tuple[str, str]]) -> int:
        split = self._by_shard(leases)
        n = sum(await gather_all(p.release(ls) for p, ls in zip(self.read_parts, split, strict=True) if ls))
        self._settled(x for ls in split for x in ls)
        return n

    async def nack(self, lease_id: str, token: str, env: Envelope, due: float) -> bool:
        ok = await self.part(lease_id).nack(lease_id, token, env, due)
        self._settled([(lease_id, token)])
        return ok

    async def dead(self, lease_id: str, token: str, fields: dict[str, str], *, maxlen: int = 100_000) -> bool:
        ok = await self.part(lease_id).dead(lease_id, token, fields, maxlen=maxlen)
        self._settled([(lease_id, token)])
        return ok

    async def unwait(self, worker: str) -> None:
        await gather_all(p.unwait(worker) for p in self.read_parts)

    async def hold(self, domain: str, *, base: float, cap: float, rnd: float, min_wait: float = 0.0) -> float:
        return max(await gather_all(
            p.hold(domain, base=base, cap=cap, rnd=rnd, min_wait=min_wait) for p in self.parts
        ))

    async def commit_claiming(
        self,
        commits: Sequence[Commit],
        *,
        ack: bool = True,
        worker: str = "",
        lease_seconds: float = 0.0,
        nonce: str = "",
    ) -> CommitReply:
        """:meth:`FleetQueue.commit_claiming` over the shards, in the waves of ``shardplan``: every commit's
        children (and redirect hops) into their own shards first (its own shard's too; a children commit's
        hops once its own shard has said they count), then each commit's DONE and ack in its own shard.
        Caller-chosen child ids (``Commit.ids``) must be ``new_id(fp)``'s: one that routes to another shard
        than its fingerprint's is a QueueError."""
        if not commits:
            return CommitReply([], [], [], [])
        if len(self.read_parts) == 1:  # one shard: one call, as FleetQueue
            return await self.parts[0].commit_claiming(
                commits, ack=ack, worker=worker, lease_seconds=lease_seconds, nonce=nonce)
        plan = plan_commits(list(commits), self.n, self._route, width=len(self.read_parts))
        nonce = nonce or secrets.token_hex(4)  # one for every shard: a retried batch plans the same entries

        async def wave(lists: list[list[Commit]]) -> list[CommitReply | None]:
            async def one(s: int) -> CommitReply | None:
                if not lists[s]:
                    return None
                return await self.read_parts[s].commit_claiming(
                    lists[s], ack=ack, worker=worker, lease_seconds=lease_seconds, nonce=nonce
                )

            return await gather_all(one(s) for s in range(len(lists)))

        marks = await wave(plan.marks) if any(plan.marks) else []
        first = await wave(plan.early_wave(marks))
        reply = merge_replies(plan, first, await wave(plan.final))
        late = plan.late_wave(reply.acked)
        if any(late):
            await wave(late)
        self._settled((c.lease_id, c.token) for c, ok in zip(commits, reply.acked, strict=True) if ok)
        return reply

    async def drift(self, lease_id: str, token: str, domain: str, sample: dict[str, Any],
                    run: str) -> tuple[str, str]:
        """DRIFT in the request's shard. Each shard keeps the domain's window of its own outcomes, but the
        breaker is judged on all of them: when the shards' windows together trip it (``fleet_trips``),
        or the shard's own did, it is opened in every shard. Without this a breaker of N shards would
        need N times the C outcomes to open."""
        home = self.part(lease_id)
        event, window = await home.drift(lease_id, token, domain, sample, run)
        self._settled([(lease_id, token)])  # parked (or lost): no longer this worker's
        if event == "" and fleet_trips(await self._windows(domain), self.breaker):
            event = "opened" if await self.mirror_trip(domain) else ""
        elif event in ("opened", "reopened"):
            await self.mirror_trip(domain, skip=home)
        return event, window

    async def _windows(self, domain: str) -> list[str]:
        """The windows of the shards whose breaker of ``domain`` is closed: an open one keeps the window that
        opened it, which must not count again once the others recovered."""
        got = await gather_all(self.client.hmget(p.keys.breaker(domain), "state", "window") for p in self.parts)
        return [text(w) for st, w in got if w is not None and (st is None or text(st) == "closed")]

    async def mirror_trip(self, domain: str, *, skip: FleetQueue | None = None) -> int:
        """Open ``domain``'s breaker in every shard (but ``skip``) where it is closed; how many opened."""
        b = self.breaker
        args = [domain, repr(time.time()), repr(b.cooldown), repr(b.cooldown_cap)]
        return sum(await gather_all(
            self._trip(p.keys.select(self._trip.meta.keys, domain=domain), args) for p in self.parts if p is not skip
        ))

    async def breaker_reset(self, domain: str) -> int:
        return sum(await gather_all(p.breaker_reset(domain) for p in self.read_parts))

    async def purge(self) -> None:
        await gather_all(p.purge() for p in self.read_parts)

    def leases_of(self, leased: Iterable[Lease]) -> list[int]:
        """The shard of each lease (tests, the simulator)."""
        return [shard_of(x.id, self.n) for x in leased]

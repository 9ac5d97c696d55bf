"""The reliable request queue: READY → IN-FLIGHT (leased) → ack | DELAYED | DLQ, all in Redis.

Why this shape (docs/architecture.md, "Request lifecycle"): a worker may die at any instant, so a request
is never removed from Redis until its effects are durable; it is *leased* with a deadline, and a
reaper that any worker runs returns expired leases to READY. Every transition is one Lua call, and the
calls take batches so a page costs well under one Redis round trip. The scripts are
``scraper/queue/lua/*.lua``; each call passes the KEYS its header names, resolved once per spider by ``Keys.select``.

One implementation, on ``redis.asyncio``: workers run it on the reactor's asyncio loop, and the CLI
drives it with ``asyncio.run``.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from scraper.queue import redisio
from scraper.queue import scripts as lua
from scraper.queue.envelope import Envelope
from scraper.queue.gating import GateReply, Gating
from scraper.queue.inspection import Inspection
from scraper.queue.keys import SPIDERS_KEY, Keys, QueueError, check_spider_name, known_spiders, new_id
from scraper.queue.records import BreakerParams, Commit, CommitReply, Lease, LeaseBatch
from scraper.queue.seedwire import SeedStream, as_eval, child_args, entry_args, fill_rows, pairs, text
from scraper.queue.seenset import packed

__all__ = [
    "SPIDERS_KEY",
    "BreakerParams",
    "Commit",
    "CommitReply",
    "FleetQueue",
    "GateReply",
    "Keys",
    "Lease",
    "LeaseBatch",
    "QueueError",
    "check_spider_name",
    "known_spiders",
    "new_id",
]


def _wire_outcome(c: Commit) -> str:
    """COMMIT's outcome field: a done commit's breaker outcome ('h' is none), or 'h' on a children commit
    (lua/commit.lua: its hops count only while its lease is the sender's); else ''."""
    if c.done:
        return "" if c.outcome == "h" else c.outcome
    return "h" if c.outcome == "h" else ""


class FleetQueue(Inspection, Gating):
    """All queue transitions of one spider."""

    def __init__(
        self,
        client: aioredis.Redis,
        spider: str,
        *,
        dedup_ttl: int = 48 * 3600,
        breaker: BreakerParams | None = None,
        shard: int = 0,
        shards: int = 1,
    ) -> None:
        self.client, self.keys = client, Keys(spider, shard, shards)
        self.parts: list[FleetQueue] = [self]  # its shards: itself; N queues in a ShardedQueue (queue/shards.py)
        self.read_parts: list[FleetQueue] = self.parts  # and the shards of earlier counts (reads only)
        self.dedup_ttl, self.breaker = dedup_ttl, breaker or BreakerParams()
        b = functools.partial(lua.Bound, client)
        self._seed, self._seed_bulk = b("seed"), b("seed_bulk")
        self._lease, self._maintain, self._heartbeat = b("lease"), b("maintain"), b("heartbeat")
        self._commit, self._ack, self._nack, self._release = b("commit"), b("ack"), b("nack"), b("release")
        self._dead, self._has, self._hold = b("dead"), b("has"), b("hold")
        self._drift, self._breaker_reset = b("drift"), b("breaker_reset")
        self._gate, self._ungate = b("gate"), b("ungate")  # the politeness gate (scraper.queue.gating)
        # KEYS fixed per spider, resolved once from each header (the hot path only passes the list)
        sel = self.keys.select
        self._k_lease = sel(self._lease.meta.keys)
        self._k_maintain = sel(self._maintain.meta.keys)
        self._k_heartbeat = sel(self._heartbeat.meta.keys)
        self._k_commit = sel(self._commit.meta.keys)
        self._k_ack = sel(self._ack.meta.keys)
        self._k_nack = sel(self._nack.meta.keys)
        self._k_release = sel(self._release.meta.keys)
        self._k_dead = sel(self._dead.meta.keys)
        self._k_hold = sel(self._hold.meta.keys)

    @property
    def spider(self) -> str:
        return self.keys.spider

    def wake_channels(self, worker: str) -> list[str]:
        """The pub/sub channels on which ``worker`` is told of new work (one per shard)."""
        return [p.keys.wake_channel(worker) for p in self.parts]

    # -- producers --------------------------------------------------------------------------------

    async def seed(self, run: str, envelopes: Iterable[Envelope], *, batch: int = 2000) -> tuple[int, int]:
        """Enqueue envelopes unless SEEN in this run (even with dont_filter). Returns (enqueued, skipped)."""
        return await self._seed_rows(run, ((env.dumps(), env.fp, str(env.priority)) for env in envelopes), batch)

    async def seed_entries(self, run: str, entries: Iterable[tuple[str, str]], *, batch: int = 5000) -> tuple[int, int]:
        """``seed`` for ready-made priority-0 entries ``(envelope JSON, fp)`` (see ``SeedEncoder``)."""
        return await self._seed_rows(run, ((j, fp, "0") for j, fp in entries), batch)

    async def _seed_rows(self, run: str, rows: Iterable[tuple[str, str, str]], batch: int) -> tuple[int, int]:
        """Enqueue ``rows`` (envelope JSON, fp, priority) in batches of ``batch``.

        A batch is one MULTI: an HSET of its envelopes, then SEED_BULK by SHA (lua/seed_bulk.lua says
        why the JSON stays out of Lua). One batch goes through the pool; more are streamed (see
        SeedStream) so Redis runs batch k while Python builds batch k+1."""
        await self.client.sadd(SPIDERS_KEY, self.spider)
        bulk = self._seed_bulk
        keys = self.keys.select(bulk.meta.keys, run=run)
        head = ["EVALSHA", bulk.sha, str(len(keys)), *keys, str(self.dedup_ttl), repr(time.time()), run]
        it = iter(rows)
        stream: SeedStream | None = None
        enq = total = 0
        try:
            while True:
                hset = ["HSET", self.keys.env]
                script = list(head)
                n = await fill_rows(it, hset, script, batch, yielding=stream is not None)
                bulk.meta.check(len(keys), len(script) - 3 - len(keys))
                total += n
                if stream is None and n < batch:
                    if n:
                        enq += await self._seed_batch(hset, script)
                    break
                if stream is None:
                    # on a cluster: the primary of the spider's slot (every key of the stream is in it)
                    stream = SeedStream(await redisio.dedicated_connection(self.client, self.keys.env))
                    # loaded once here, so that every batch of the stream can go by SHA
                    await stream.conn.send_command("SCRIPT", "LOAD", lua.load("seed_bulk").source)
                    await stream.conn.read_response()
                if n:
                    await stream.send([("MULTI",), hset, script, ("EXEC",)])
                if n < batch:
                    break
            if stream is not None:
                enq += await stream.finish()
        finally:
            if stream is not None:
                await stream.close()
        return enq, total - enq

    async def _seed_batch(self, hset: list[str], script: list[str]) -> int:
        """One MULTI of HSET + EVALSHA; if Redis does not know the script yet, the same MULTI again with
        EVAL, which loads it (the HSET writes the same fields with the same values twice)."""
        for cmd in (script, as_eval(script)):
            pipe = self.client.pipeline(transaction=True)
            pipe.execute_command(*hset)
            pipe.execute_command(*cmd)
            try:
                res = await pipe.execute()
            except NoScriptError:
                continue
            return int(res[1])
        raise QueueError("seed transaction did not run: the Redis script cache refused SEED_BULK")

    # -- consumers --------------------------------------------------------------------------------

    async def lease(self, n: int, *, worker: str, lease_seconds: float, maintain_limit: int = 100) -> LeaseBatch:
        res = await self._lease(
            self._k_lease,
            [self.keys.prefix, repr(time.time()), n, repr(lease_seconds), worker, maintain_limit, secrets.token_hex(4)],
        )
        promoted, reaped, leased, skipped, held, parked, remaining, cancelled = res
        return LeaseBatch(
            cancelled=int(cancelled),
            held=int(held),
            parked=int(parked),
            remaining=int(remaining),
            promoted=int(promoted),
            reaped=[(text(a), text(b)) for a, b in pairs(reaped, 2)],
            leased=[Lease(text(i), bytes(j), int(d), text(t)) for i, j, d, t in pairs(leased, 4)],
            skipped=[(text(i), bytes(j)) for i, j in pairs(skipped, 2)],
        )

    async def maintain(self, limit: int = 500) -> tuple[int, list[tuple[str, str]]]:
        promoted, reaped = await self._maintain(self._k_maintain, [self.keys.prefix, repr(time.time()), limit])
        return int(promoted), [(text(a), text(b)) for a, b in pairs(reaped, 2)]

    async def heartbeat(self, leases: Iterable[tuple[str, str]], lease_seconds: float) -> list[str]:
        args: list[Any] = [repr(time.time()), repr(lease_seconds)]
        for lid, token in leases:
            args += [lid, token]
        if len(args) == 2:
            return []
        lost = await self._heartbeat(self._k_heartbeat, args)
        return [text(x) for x in lost]

    async def commit(
        self, commits: Sequence[Commit], *, ack: bool = True
    ) -> tuple[list[int], list[tuple[str, str]], list[bool]]:
        """DONE + discovered + breaker outcomes + acks for a batch, in one script call.

        Returns (enqueued children per commit, breaker events as (domain, event), acked per commit).
        A commit with ``done=False`` only enqueues its children."""
        reply = await self.commit_claiming(commits, ack=ack)
        return reply.enqueued, reply.events, reply.acked

    async def commit_claiming(
        self,
        commits: Sequence[Commit],
        *,
        ack: bool = True,
        worker: str = "",
        lease_seconds: float = 0.0,
        nonce: str = "",
    ) -> CommitReply:
        """:meth:`commit`, and the children named by ``Commit.claim`` leased to ``worker``.

        Pass the same ``nonce`` when retrying a batch whose reply was lost: a child the first call
        claimed is then answered as claimed (same token) instead of SEEN, so its fetch goes on."""
        if not commits:
            return CommitReply([], [], [], [])
        keys = list(self._k_commit)
        args = self._commit_args(commits, ack, worker, lease_seconds, nonce or secrets.token_hex(4), keys)
        counts, events, acked, claims = await self._commit(keys, args)
        return CommitReply(
            [int(x) for x in counts],
            [(text(a), text(b)) for a, b in pairs(events, 2)],
            [bool(int(x)) for x in acked],
            [(text(t), int(d)) for t, d in pairs(claims, 2)],
        )

    def _commit_args(
        self, commits: Sequence[Commit], ack: bool, worker: str, lease_seconds: float, nonce: str, keys: list[str]
    ) -> list[Any]:
        """COMMIT's ARGV; appends to ``keys`` one (SEEN, DONE) pair per distinct run of the batch."""
        args: list[Any] = [
            self.keys.prefix,
            str(self.dedup_ttl),
            repr(time.time()),
            *self.breaker.args(),
            "1" if ack else "0",
            repr(lease_seconds),
            worker,
            nonce,
        ]
        runs: dict[str, int] = {}
        for c in commits:
            r = runs.get(c.run)
            if r is None:
                r = runs[c.run] = len(runs) + 1
                keys += (self.keys.seen(c.run), self.keys.done(c.run))
            claim = c.claim if worker and 0 < c.claim <= len(c.discovered) else 0
            fp: str | bytes = ((b"?" + packed(c.fp)) if c.strict else packed(c.fp)) if c.done else ""
            args += [r, fp, c.lease_id, c.token, c.domain, _wire_outcome(c), claim, len(c.discovered), len(c.hops)]
            ids = c.ids if len(c.ids) == len(c.discovered) else [None] * len(c.discovered)
            for env, cid in zip(c.discovered, ids, strict=True):
                args += child_args(env, cid)
            args += [packed(h) for h in c.hops]
        return args

    async def drift(self, lease_id: str, token: str, domain: str, sample: dict[str, Any],
                    run: str) -> tuple[str, str]:
        """Record a C outcome and park the request. Returns (breaker event, window); the event is
        ``cancelled`` (nothing parked or recorded) when ``run`` was cancelled."""
        res = await self._drift(
            self.keys.select(self._drift.meta.keys, domain=domain),
            [
                self.keys.prefix,
                repr(time.time()),
                *self.breaker.args(),
                lease_id,
                token,
                domain,
                json.dumps(sample, default=str),
                run,
            ],
        )
        return text(res[0]), text(res[1])

    async def breaker_reset(self, domain: str) -> int:
        return int(
            await self._breaker_reset(
                self.keys.select(self._breaker_reset.meta.keys, domain=domain),
                [self.keys.prefix, domain, repr(time.time())],
            )
        )

    async def ack(self, leases: Iterable[tuple[str, str]]) -> int:
        args: list[Any] = []
        for lid, token in leases:
            args += [lid, token]
        if not args:
            return 0
        return sum(int(x) for x in await self._ack(self._k_ack, args))

    async def nack(self, lease_id: str, token: str, env: Envelope, due: float) -> bool:
        res = await self._nack(self._k_nack, [lease_id, token, repr(due), env.dumps()])
        return bool(res)

    async def release(self, leases: Iterable[tuple[str, str]]) -> int:
        args: list[Any] = []
        for lid, token in leases:
            args += [lid, token]
        if not args:
            return 0
        return int(await self._release(self._k_release, args))

    async def dead(self, lease_id: str, token: str, fields: dict[str, str], *, maxlen: int = 100_000) -> bool:
        """Move a lease (or, with token='', any entry) to the DLQ stream with its evidence fields; True when
        it was dead-lettered."""
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v]
        res = await self._dead(self._k_dead, [str(maxlen), lease_id, token, *flat])
        return int(res) == 1  # 0: the lease was lost, 2: its run was cancelled (forgotten, no DLQ entry)

    async def hold(self, domain: str, *, base: float, cap: float, rnd: float, min_wait: float = 0.0) -> float:
        """Advance ``domain``'s fleet-wide backoff (one step per burst); returns the hold deadline."""
        res = await self._hold(
            self._k_hold,
            [domain, repr(time.time()), repr(base), repr(cap), repr(rnd), repr(min_wait)],
        )
        return float(text(res))

    async def purge(self) -> None:
        """Drop this spider's queued work and store record (storebind: `make demo` of another checkout writes to its
        ./data); SEEN/DONE, the DLQ stay. Only for namespaces a command owns (``fleet demo``, ``fleet smoke``)."""
        k = self.keys
        domains = [text(d) for d in await self.client.smembers(k.prefix + "parkdom")]
        await self.client.delete(
            k.store,
            k.ready,
            k.inflight,
            k.delayed,
            k.env,
            k.lease,
            k.dlv, k.lsweep,
            k.prefix + "parkdom",
            *[f"{k.prefix}parked:{d}" for d in domains],
        )

    async def requeue(self, envelopes: Iterable[Envelope]) -> int:
        """Back to READY bypassing SEEN (a dead-lettered request is recorded there already).

        Envelopes must carry ``dont_filter=True``; ``fleet dlq requeue`` sets it."""
        by_run: dict[str, list[Envelope]] = {}
        for env in envelopes:
            by_run.setdefault(env.run, []).append(env)
        n = 0
        for run, envs in by_run.items():
            head = [str(self.dedup_ttl), repr(time.time()), run]
            args = [a for env in envs for a in entry_args(env)]
            n += int(await self._seed(self.keys.select(self._seed.meta.keys, run=run), head + args))
        return n


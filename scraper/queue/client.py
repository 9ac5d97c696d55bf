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

import asyncio
import collections
import contextlib
import functools
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from scraper.queue import scripts as lua
from scraper.queue.envelope import Envelope, new_ids
from scraper.queue.names import is_name

__all__ = [
    "SPIDERS_KEY",
    "BreakerParams",
    "Commit",
    "CommitReply",
    "FleetQueue",
    "Keys",
    "Lease",
    "LeaseBatch",
    "QueueError",
    "check_spider_name",
    "known_spiders",
    "new_id",
]

SPIDERS_KEY = "fleet:spiders"


class QueueError(RuntimeError):
    """A queue operation could not be carried out; the message says why."""


def check_spider_name(name: str) -> str:
    if not is_name(name):
        raise QueueError(f"spider name {name!r} cannot be used as a queue name: use letters, digits, '_', '-' or '.'")
    return name


def new_id() -> str:
    return secrets.token_hex(8)


class Keys:
    """Key names of one spider; all share the ``{spider}`` hash tag (one Redis Cluster slot)."""

    def __init__(self, spider: str) -> None:
        self.spider = check_spider_name(spider)
        self.prefix = f"fleet:{{{spider}}}:"
        self.ready = self.prefix + "ready"
        self.inflight = self.prefix + "inflight"
        self.delayed = self.prefix + "delayed"
        self.env = self.prefix + "env"
        self.lease = self.prefix + "lease"
        self.dlv = self.prefix + "dlv"
        self.dlq = self.prefix + "dlq"
        self.runs = self.prefix + "runs"
        self.waiting = self.prefix + "waiting"  # workers whose last lease found nothing (lua/_helpers.lua: wake)
        self.wake = self.prefix + "wake"  # pub/sub channel: work reached READY while a worker waits
        self.seq = self.prefix + "seq"  # READY's tie-breaker counter (newest first within a priority)
        self.hold = self.prefix + "hold"  # per-domain backoff deadlines (HOLD)
        self.brk = self.prefix + "brk"  # the breakers that are not closed: domain -> state|until
        self.parkdom = self.prefix + "parkdom"  # domains with parked requests
        self.stage = self.prefix + "stage"  # scrapy-redis start feeders: worker -> deadline|run (startkeys)

    def seen(self, run: str) -> str:
        return f"{self.prefix}seen:{run}"

    def done(self, run: str) -> str:
        return f"{self.prefix}done:{run}"

    def tally(self, run: str) -> str:
        """Per-run counts the workers flush in batches (scraper.worker.tally): items, coverage, schema."""
        return f"{self.prefix}tally:{run}"

    def staging(self, worker: str) -> str:
        """A worker's staging list of start-key entries being converted (scraper.queue.startkeys)."""
        return f"{self.prefix}stage:{worker}"

    def breaker(self, domain: str) -> str:
        return f"{self.prefix}breaker:{domain}"

    def parked(self, domain: str) -> str:
        return f"{self.prefix}parked:{domain}"

    def select(self, names: Iterable[str], *, run: str | None = None, domain: str | None = None) -> list[str]:
        """The keys a script's header names (lua.ScriptMeta.keys), in its order: the call site derives
        its KEYS from the header, so names and order cannot drift apart."""
        out: list[str] = []
        for n in names:
            if n in ("seen", "done"):
                if run is None:
                    raise QueueError(f"key {n!r} needs a run")
                out.append(self.seen(run) if n == "seen" else self.done(run))
            elif n in ("breaker", "parked"):
                if domain is None:
                    raise QueueError(f"key {n!r} needs a domain")
                out.append(self.breaker(domain) if n == "breaker" else self.parked(domain))
            else:
                out.append(getattr(self, n))
        return out


@dataclass
class Lease:
    id: str
    raw: bytes
    deliveries: int
    token: str


@dataclass
class LeaseBatch:
    promoted: int = 0
    reaped: list[tuple[str, str]] = field(default_factory=list)
    leased: list[Lease] = field(default_factory=list)
    skipped: list[tuple[str, bytes]] = field(default_factory=list)
    held: int = 0
    parked: int = 0
    remaining: int = 0  # READY's size after this lease


@dataclass(slots=True)
class Commit:
    """What one finished request leaves behind: DONE for its fingerprint, then its children."""

    lease_id: str
    token: str
    run: str
    fp: str
    discovered: list[Envelope] = field(default_factory=list)
    domain: str = ""
    outcome: str = ""  # breaker outcome: 'o' item page fine, 'n' navigation page, '' untracked
    done: bool = True  # False: only enqueue the children (early, before the parent's writes)
    claim: int = 0  # 1-based index of a child to lease to this worker at once (0: none); see COMMIT
    ids: list[str] = field(default_factory=list)  # queue ids of the children, chosen by the caller (or new)


class CommitReply(NamedTuple):
    """What the COMMIT script answered, one entry per commit of the batch."""

    enqueued: list[int]
    events: list[tuple[str, str]]  # breaker events (domain, event)
    acked: list[bool]
    claims: list[tuple[str, int]]  # (token, deliveries) of the claimed child; ("", 0) not queued, ("", -1) gated


@dataclass(frozen=True)
class BreakerParams:
    """Rate-based drift breaker: opens on >= min_events C outcomes and C rate >= rate over window."""

    window: int = 20
    min_events: int = 5
    rate: float = 0.5
    cooldown: float = 1800.0
    cooldown_cap: float = 8 * 3600.0

    def args(self) -> list[str]:
        return [str(self.window), str(self.min_events), repr(self.rate), repr(self.cooldown), repr(self.cooldown_cap)]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _pairs(flat: Sequence[Any], n: int) -> list[list[Any]]:
    return [list(flat[i : i + n]) for i in range(0, len(flat), n)]


def _entry_args(env: Envelope, *, force_filter: bool = False, entry_id: str | None = None) -> list[str]:
    dont_filter = "0" if force_filter else ("1" if env.dont_filter else "0")
    return [entry_id or new_id(), env.dumps(), env.fp, str(env.priority), dont_filter]


async def _fill(
    rows: Iterator[tuple[str, str, str]], hset: list[str], script: list[str], batch: int, yielding: bool
) -> int:
    """Append up to ``batch`` rows to the HSET and SEED_BULK arguments; returns how many.

    ``yielding``: a batch is in flight, so give asyncio a turn every 256 rows to stream it to Redis
    and read replies."""
    n = 0
    ids: list[str] = []
    for json_, fp, prio in rows:
        k = n & 255
        if not k:
            if yielding and n:
                await asyncio.sleep(0)
            ids = new_ids(256)
        i = ids[k]
        hset += (i, json_)
        script += (i, fp, prio)
        n += 1
        if n == batch:
            break
    return n


def _as_eval(script: Sequence[str]) -> list[str]:
    """An ``EVALSHA sha ...`` command of SEED_BULK as ``EVAL source ...``."""
    return ["EVAL", lua.load("seed_bulk").source, *script[2:]]


async def _exec_reply(conn: Any) -> int:
    """The SEED_BULK count from the replies to MULTI, HSET, EVALSHA, EXEC (error replies raise)."""
    for _ in range(3):
        await conn.read_response()  # +OK, +QUEUED, +QUEUED
    res = await conn.read_response()
    if not isinstance(res, list) or len(res) != 2:
        raise QueueError(f"seed transaction did not run: {res!r}")
    for x in res:
        if isinstance(x, Exception):
            raise x
    return int(res[1])


class _SeedStream:
    """Seed batches pipelined on a connection of their own.

    Why: with a redis-py pipeline per batch, each batch was packed (pure Python, ~3.5 µs an entry)
    and sent only after the previous reply was back, and Redis idled meanwhile. Here a batch is packed
    as soon as it is built and sent while Redis still runs the previous one, whose reply is read after;
    one connection keeps the batches in input order (Redis runs a connection's commands in order)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.enqueued = 0
        self._shipping: asyncio.Future[None] | None = None  # sends a batch, then reads the previous reply
        self._unread: collections.deque[Sequence[Sequence[str]]] = collections.deque()  # sent, reply unread

    async def send(self, commands: Sequence[Sequence[str]]) -> None:
        packed = self.conn.pack_commands(commands)  # hiredis's packer on a scraper.queue.redisio client
        if self._shipping is not None:
            await self._shipping
        self._shipping = asyncio.ensure_future(self._ship(packed, commands))
        await asyncio.sleep(0)  # start sending it

    async def _ship(self, packed: list[bytes], commands: Sequence[Sequence[str]]) -> None:
        await self.conn.send_packed_command(packed, check_health=False)  # no PING amid pending replies
        self._unread.append(commands)
        if len(self._unread) > 1:
            await self._read_one()

    async def _read_one(self) -> None:
        """Read the oldest unread reply. A batch whose EVALSHA met NOSCRIPT (the script cache was flushed
        mid-seed; its HSET ran) is sent again with EVAL, which loads the script, and read in its turn."""
        commands = self._unread.popleft()
        try:
            self.enqueued += await _exec_reply(self.conn)
        except NoScriptError:
            multi, hset, script, exec_ = commands
            if script[0] != "EVALSHA":
                raise
            again = [multi, hset, _as_eval(script), exec_]
            await self.conn.send_packed_command(self.conn.pack_commands(again), check_health=False)
            self._unread.append(again)

    async def finish(self) -> int:
        """Wait for every batch; returns how many entries they enqueued."""
        if self._shipping is not None:
            await self._shipping
            self._shipping = None
        while self._unread:
            await self._read_one()
        return self.enqueued

    async def close(self) -> None:
        """Drop the connection. If the input failed midway, first let the batches already handed over
        run and read their replies: closing a socket with replies unread resets it, and Redis would
        drop a batch it had not read in full."""
        try:
            ok = True
            if self._shipping is not None:
                await asyncio.wait([self._shipping])
                ok = not self._shipping.cancelled() and self._shipping.exception() is None
                self._shipping = None
            if ok and self._unread:
                with contextlib.suppress(Exception):  # the caller is raising its own error
                    while self._unread:
                        await self._read_one()
        finally:
            await self.conn.disconnect()


class FleetQueue:
    """All queue transitions of one spider."""

    def __init__(
        self,
        client: aioredis.Redis,
        spider: str,
        *,
        dedup_ttl: int = 48 * 3600,
        breaker: BreakerParams | None = None,
    ) -> None:
        self.client = client
        self.keys = Keys(spider)
        self.dedup_ttl = dedup_ttl
        self.breaker = breaker or BreakerParams()
        b = functools.partial(lua.Bound, client)
        self._seed, self._seed_bulk = b("seed"), b("seed_bulk")
        self._lease, self._maintain, self._heartbeat = b("lease"), b("maintain"), b("heartbeat")
        self._commit, self._ack, self._nack, self._release = b("commit"), b("ack"), b("nack"), b("release")
        self._dead, self._has, self._hold = b("dead"), b("has"), b("hold")
        self._drift, self._breaker_reset = b("drift"), b("breaker_reset")
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
        _SeedStream) so Redis runs batch k while Python builds batch k+1."""
        await self.client.sadd(SPIDERS_KEY, self.spider)
        bulk = self._seed_bulk
        keys = self.keys.select(bulk.meta.keys, run=run)
        head = ["EVALSHA", bulk.sha, str(len(keys)), *keys, str(self.dedup_ttl), repr(time.time()), run]
        it = iter(rows)
        stream: _SeedStream | None = None
        enq = total = 0
        try:
            while True:
                hset = ["HSET", self.keys.env]
                script = list(head)
                n = await _fill(it, hset, script, batch, yielding=stream is not None)
                bulk.meta.check(len(keys), len(script) - 3 - len(keys))
                total += n
                if stream is None and n < batch:
                    if n:
                        enq += await self._seed_batch(hset, script)
                    break
                if stream is None:
                    stream = _SeedStream(self.client.connection_pool.make_connection())  # type: ignore[no-untyped-call]
                    await stream.conn.connect()
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
        for cmd in (script, _as_eval(script)):
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
        promoted, reaped, leased, skipped, held, parked, remaining = res
        return LeaseBatch(
            held=int(held),
            parked=int(parked),
            remaining=int(remaining),
            promoted=int(promoted),
            reaped=[(_s(a), _s(b)) for a, b in _pairs(reaped, 2)],
            leased=[Lease(_s(i), bytes(j), int(d), _s(t)) for i, j, d, t in _pairs(leased, 4)],
            skipped=[(_s(i), bytes(j)) for i, j in _pairs(skipped, 2)],
        )

    async def maintain(self, limit: int = 500) -> tuple[int, list[tuple[str, str]]]:
        promoted, reaped = await self._maintain(self._k_maintain, [self.keys.prefix, repr(time.time()), limit])
        return int(promoted), [(_s(a), _s(b)) for a, b in _pairs(reaped, 2)]

    async def heartbeat(self, leases: Iterable[tuple[str, str]], lease_seconds: float) -> list[str]:
        args: list[Any] = [repr(time.time() + lease_seconds)]
        for lid, token in leases:
            args += [lid, token]
        if len(args) == 1:
            return []
        lost = await self._heartbeat(self._k_heartbeat, args)
        return [_s(x) for x in lost]

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
            [(_s(a), _s(b)) for a, b in _pairs(events, 2)],
            [bool(int(x)) for x in acked],
            [(_s(t), int(d)) for t, d in _pairs(claims, 2)],
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
            args += [r, c.fp if c.done else "", c.lease_id, c.token, c.domain, c.outcome, claim, len(c.discovered)]
            ids = c.ids if len(c.ids) == len(c.discovered) else [None] * len(c.discovered)
            for env, cid in zip(c.discovered, ids, strict=True):
                args += _entry_args(env, entry_id=cid)
        return args

    async def drift(self, lease_id: str, token: str, domain: str, sample: dict[str, Any]) -> tuple[str, str]:
        """Record a C outcome and park the request. Returns (breaker event, window)."""
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
            ],
        )
        return _s(res[0]), _s(res[1])

    async def breaker_reset(self, domain: str) -> int:
        return int(
            await self._breaker_reset(
                self.keys.select(self._breaker_reset.meta.keys, domain=domain),
                [self.keys.prefix, domain, repr(time.time())],
            )
        )

    async def breakers(self) -> dict[str, dict[str, Any]]:
        """Every breaker of this spider with its state, counts and parked backlog."""
        out: dict[str, dict[str, Any]] = {}
        pattern = f"{self.keys.prefix}breaker:*"
        async for key in self.client.scan_iter(match=pattern, count=500):
            k = _s(key)
            domain = k[len(self.keys.prefix) + len("breaker:") :]
            raw = {_s(a): _s(b) for a, b in (await self.client.hgetall(k)).items()}
            window = raw.get("window", "")
            c = window.count("C")
            state = raw.get("state", "closed")
            out[domain] = {
                "state": state,
                "window": len(window),
                "c_events": c,
                "c_rate": round(c / len(window), 3) if window else 0.0,
                "trips": int(raw.get("trips", 0) or 0),
                "drift_events": int(raw.get("drift_events", 0) or 0),
                "opened_at": float(raw["opened_at"]) if raw.get("opened_at") and state != "closed" else None,
                "open_until": float(raw["open_until"]) if raw.get("open_until") and state != "closed" else None,
                "parked": int(await self.client.zcard(f"{self.keys.prefix}parked:{domain}")),
                "samples": json.loads(raw.get("samples") or "[]"),
            }
        return out

    async def breaker_counts(self) -> dict[str, int]:
        """How many breakers are open and half-open: one HGETALL of the not-closed ones (the Lua
        scripts keep them in ``brk``), however many domains ever had a breaker record."""
        out = {"open": 0, "half_open": 0}
        for v in (await self.client.hgetall(self.keys.prefix + "brk")).values():
            state = _s(v).split("|", 1)[0]
            if state == "open":
                out["open"] += 1
            elif state == "half":
                out["half_open"] += 1
        return out

    async def parked(self) -> int:
        domains = [_s(d) for d in await self.client.smembers(self.keys.prefix + "parkdom")]
        total = 0
        for d in domains:
            total += int(await self.client.zcard(f"{self.keys.prefix}parked:{d}"))
        return total

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
        """Move a lease (or, with token='', any entry) to the DLQ stream with its evidence fields."""
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v]
        res = await self._dead(self._k_dead, [str(maxlen), lease_id, token, *flat])
        return bool(res)

    async def hold(self, domain: str, *, base: float, cap: float, rnd: float, min_wait: float = 0.0) -> float:
        """Advance ``domain``'s fleet-wide backoff (one step per burst); returns the hold deadline."""
        res = await self._hold(
            self._k_hold,
            [domain, repr(time.time()), repr(base), repr(cap), repr(rnd), repr(min_wait)],
        )
        return float(_s(res))

    async def purge(self) -> None:
        """Drop this spider's queued work (READY/IN-FLIGHT/DELAYED/PARKED); SEEN/DONE and the DLQ stay.

        Only for namespaces a command owns outright (``fleet demo``, ``fleet smoke``)."""
        k = self.keys
        domains = [_s(d) for d in await self.client.smembers(k.prefix + "parkdom")]
        await self.client.delete(
            k.ready,
            k.inflight,
            k.delayed,
            k.env,
            k.lease,
            k.dlv,
            k.prefix + "parkdom",
            *[f"{k.prefix}parked:{d}" for d in domains],
        )

    # -- inspection -------------------------------------------------------------------------------

    async def has_member(self, key: str, fps: Sequence[str]) -> list[bool]:
        res = await self._has([key], fps)
        return [bool(int(x)) for x in res]

    async def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.ready)
        pipe.zcard(self.keys.inflight)
        pipe.zcard(self.keys.delayed)
        pipe.xlen(self.keys.dlq)
        ready, inflight, delayed, dlq = await pipe.execute()
        return {
            "ready": int(ready),
            "inflight": int(inflight),
            "delayed": int(delayed),
            "dlq": int(dlq),
            "parked": await self.parked(),
        }

    async def pending(self) -> int:
        """READY + IN-FLIGHT + DELAYED: the work that keeps ``--until-idle`` workers alive.

        Polled by every idle worker, so one round trip and no PARKED scan (parked work never counts)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.ready)
        pipe.zcard(self.keys.inflight)
        pipe.zcard(self.keys.delayed)
        return sum(int(x) for x in await pipe.execute())

    async def runs(self) -> dict[str, dict[str, int]]:
        runs = [_s(r) for r in await self.client.zrange(self.keys.runs, 0, -1)]
        if not runs:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for r in runs:
            pipe.hget(self.keys.seen(r), "count")
            pipe.hget(self.keys.done(r), "count")
        res = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        for i, r in enumerate(runs):
            seen, done = res[2 * i], res[2 * i + 1]
            if seen is None and done is None:
                continue  # expired (TTL) run
            out[r] = {"seen": int(seen or 0), "done": int(done or 0)}
        return out

    async def dlq_iter(self, run: str | None = None) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """DLQ entries newest first (all, or one run's), paged so a long stream never loads at once."""
        last = "+"
        while True:
            rows: Any = await self.client.xrevrange(self.keys.dlq, max=last, count=500)
            for rid, fields in rows or []:
                f = {_s(k): _s(v) for k, v in (fields or {}).items()}
                if run is None or f.get("run") == run:
                    yield _s(rid), f
            if not rows or len(rows) < 500:
                return
            last = "(" + _s(rows[-1][0])

    async def dlq_entries(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        async for entry in self.dlq_iter():
            out.append(entry)
            if len(out) >= count:
                break
        return out

    async def requeue(self, envelopes: Iterable[Envelope]) -> int:
        """Back to READY bypassing SEEN (a dead-lettered request is recorded there already).

        Envelopes must carry ``dont_filter=True``; ``fleet dlq requeue`` sets it."""
        by_run: dict[str, list[Envelope]] = {}
        for env in envelopes:
            by_run.setdefault(env.run, []).append(env)
        n = 0
        for run, envs in by_run.items():
            head = [str(self.dedup_ttl), repr(time.time()), run]
            args = [a for env in envs for a in _entry_args(env)]
            n += int(await self._seed(self.keys.select(self._seed.meta.keys, run=run), head + args))
        return n


async def known_spiders(client: aioredis.Redis) -> list[str]:
    """The spiders ever seeded; a member that is not a valid spider name (written by something else) is
    left out rather than failing every command that lists spiders."""
    members = [
        s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in await client.smembers(SPIDERS_KEY)
    ]
    return sorted(m for m in members if is_name(m))

"""The feeder: keeps the local buffer of leases filled (LEASE loop, prefetch, the wake channel), and
speculates on the next pagination child before Redis has even queued it.

Why a small buffer and a wake channel: deep buffers delay newly discovered (LIFO-first) work behind old
leases, and an idle worker that only polls finds new work after its busy peer has leased it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from scrapy import Request, Spider

from scraper.queue.client import Lease, LeaseBatch
from scraper.queue.entrycheck import EnvelopeError
from scraper.queue.envelope import Envelope
from scraper.worker.breakers import Breakers
from scraper.worker.committer import Flags
from scraper.worker.gate import Gate
from scraper.worker.health import REDIS_ERRORS, Health
from scraper.worker.ledger import VOID_KEY, LeaseState, Ledger
from scraper.worker.queueport import QueuePort
from scraper.worker.specpick import RecentChildren, pick

__all__ = ["Feeder", "Speculation"]


class Feeder:
    def __init__(self, ledger: Ledger, health: Health, flags: Flags, *, worker_id: str, lease_seconds: float,
                 prefetch: int, concurrency: int, stats: Any, log: Any, kick: Callable[[], None],
                 beat: Callable[[], Awaitable[None]], reaped: Callable[[list[tuple[str, str]]], None],
                 probe_store: Callable[[], Awaitable[None]],
                 dead: Callable[[LeaseState, str, str, bytes | None], None], max_lost: int = 0) -> None:
        self.ledger = ledger
        self.max_lost = max_lost  # FLEET_MAX_LOST_DELIVERIES (0: never)
        self.health = health
        self.flags = flags
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.stats = stats
        self.log = log
        self.kick = kick
        self.beat = beat  # renew our leases (keeper), after a stall, before asking for more
        self.reaped = reaped
        self.probe_store = probe_store
        self.dead = dead  # (state, reason, detail, raw entry): an entry that is not a usable envelope
        self.queue: QueuePort | None = None  # set when the spider opens
        self.spider: str | None = None
        self.last_beat = time.monotonic()
        self.wake = asyncio.Event()  # the feeder has something to do: the buffer runs low, or new work
        # new work may be in READY (our commit queued children, a wake message): what ends the wait after
        # a LEASE that found nothing. A low buffer alone does not: READY was empty a moment ago, and
        # asking again at once, on every turn of the engine, was half of all LEASE calls (make bench c)
        self.supply = asyncio.Event()
        self.idle_since: float | None = None
        self.gate: Gate | None = None  # the politeness gate, only for a spider that has a politeness setting

    def news(self) -> None:
        """New work may be in READY (or the flags changed): end the feeder's wait, whichever it is."""
        self.supply.set()
        self.wake.set()

    def cap(self) -> int:
        """How many requests this worker holds at most (buffered, fetching, writing, committing)."""
        return self.prefetch + 4 * self.concurrency

    def next_state(self, spider: Spider | None) -> LeaseState | None:
        """The next buffered lease as an active request (its Request built from the envelope, or the
        reused child's), for the scheduler; an envelope no Request can be built from goes to the DLQ
        (``bad_envelope``). Wakes the LEASE loop when the buffer runs below half the prefetch."""
        buffer = self.ledger.buffer
        gate = self.gate
        while buffer:
            state = buffer.popleft()
            if len(buffer) < max(1, self.prefetch // 2):
                self.wake.set()
            if gate is not None and gate.park(state):
                continue  # it waits for its domain's permit (scraper.worker.gate), holding no slot
            try:
                req = state.local if state.local is not None else state.env.to_request(spider)
                state.local = None
            except EnvelopeError as exc:
                self.dead(state, "bad_envelope", str(exc), None)
                continue
            except Exception as exc:  # anything else an entry makes a Request raise: settled, not stuck
                self.dead(state, "bad_envelope", f"not a valid request: {type(exc).__name__}: {str(exc)[:200]}", None)
                continue
            self.ledger.activate(state, req)
            if gate is not None:
                gate.dispatching(state, req)
            self.stats.inc_value("fleet/leased")
            self.log.info(
                "request_leased", run=state.env.run, fp=state.env.fp, attempt=state.lease.deliveries
            )
            return state
        self.wake.set()
        return None

    async def run(self) -> None:
        queue = self.queue
        assert queue is not None
        idle = 0.05
        flags, health, ledger = self.flags, self.health, self.ledger
        while not flags.releasing:
            if health.store_outage.down and not flags.stopping:
                await self.probe_store()
                continue
            # requests already answered only wait for their writes and commit: they use no download
            # slot, so they do not count against the fetch budget (bounded separately, 4x concurrency)
            want = min(self.prefetch + self.concurrency - ledger.fetching(), self.cap() - ledger.held())
            if flags.stopping or health.fatal or want < max(1, self.prefetch // 4):
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            # cleared before the call: a wake-up that arrives while it is on the wire (work queued after
            # Redis ran this LEASE, or a local commit) must start the next lease, not be lost
            self.wake.clear()
            self.supply.clear()
            try:
                if time.monotonic() - self.last_beat > self.lease_seconds / 2:
                    await self.beat()  # after a stall, renew ours before the reaper sees them expired
                batch = await queue.lease(want, worker=self.worker_id, lease_seconds=self.lease_seconds)
            except REDIS_ERRORS as exc:
                await health.redis_trouble(exc)
                continue
            health.redis_ok()
            self.adopt(batch)
            self.stats.inc_value("fleet/lease_calls")
            if batch.leased:
                idle = 0.05
                self.idle_since = None
                self.kick()
            else:
                self.stats.inc_value("fleet/lease_empty")
            if batch.remaining == 0:
                # READY is empty: the next LEASE waits for news of work (our commit queued children, or
                # the wake channel), or for the idle poll, which finds what arrives unannounced. A batch
                # that was all held, parked or done leased nothing from a READY that still has work:
                # ask again at once (each LEASE takes its batch out of READY, so this ends)
                try:
                    await asyncio.wait_for(self.supply.wait(), timeout=idle * (0.5 + random.random()))
                except asyncio.TimeoutError:
                    pass
                if not batch.leased:
                    idle = min(0.4, idle * 2)

    async def listen(self, client: Any, channels: list[str]) -> None:
        """Wake the feeder when work reaches READY while this worker waits for some (lua/_helpers.lua: wake).

        Why: an idle worker polls every 50-400 ms, and by then the worker that queued the work has
        leased it itself. On a pagination chain the second of two workers fetched 3 % of the pages
        (make bench, d) and the first set the pace alone. Best effort: a lost message (Redis
        restarting, a reconnect) costs one poll interval, never a request."""
        while not self.flags.releasing:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                while not self.flags.releasing:
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0) is not None:
                        self.stats.inc_value("fleet/woken")
                        self.news()
            except REDIS_ERRORS:
                await asyncio.sleep(1.0)  # the feeder reports Redis trouble; it polls meanwhile
            except RedisError as exc:  # e.g. an ACL without SUBSCRIBE on fleet:* channels
                self.log.warning("wake_channel_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
                return  # the feeder's idle polling still finds the work, up to 0.4 s later
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def adopt(self, batch: LeaseBatch) -> None:
        """Take a lease batch into the local buffer."""
        self.reaped(batch.reaped)
        if batch.parked:
            self.stats.inc_value("fleet/parked", batch.parked)
            self.log.info("requests_parked", count=batch.parked)
        for _lid, raw in batch.skipped:
            self.stats.inc_value("fleet/skipped_done")
            try:
                env = Envelope.loads(raw)
                self.log.info("request_skipped_done", run=env.run, fp=env.fp)
            except EnvelopeError:
                self.log.info("request_skipped_done")
        ledger = self.ledger
        for lease in batch.leased:
            mine = ledger.find(lease.id)
            if mine is not None and mine.claim is not None:
                # a speculative fetch whose claim was refused (held / breaker) and that LEASE now hands
                # to us before the claim's answer arrived: the lease is ours, the fetch may stand
                fut, mine.claim = mine.claim, None
                mine.lease.token, mine.lease.deliveries = lease.token, lease.deliveries
                if not fut.done():
                    fut.set_result(True)
                continue
            if mine is not None:
                # our own expired lease came back to us (we stalled past the deadline): keep the
                # one request in flight and adopt the new token, never start a second copy
                mine.lease.token, mine.lease.deliveries = lease.token, lease.deliveries
                self.stats.inc_value("fleet/lease_readopted")
                self.log.warning("lease_readopted", lease=lease.id, attempt=lease.deliveries)
                continue
            local = ledger.take_child(lease.id)
            if local is not None and lease.deliveries == 1:  # a first delivery of a child we discovered
                ledger.buffer.append(LeaseState(lease, local[0], local[1]))
                continue
            try:
                env = Envelope.loads(lease.raw)
                if self.spider is not None and env.spider != self.spider:
                    raise EnvelopeError(f"entry is for spider {env.spider!r}, not {self.spider!r}", run=env.run)
            except EnvelopeError as exc:
                # settled on its own: the rest of the batch goes on (its run, when usable, is kept so
                # `fleet run` counts the DLQ entry)
                st = LeaseState(lease, Envelope(url="", spider="", run=exc.run, fp=""))
                self.dead(st, "bad_envelope", str(exc), lease.raw)
                continue
            if self.max_lost and env.lost >= self.max_lost:
                # its leases expired that often (the reaper counts them): a page that takes its worker
                # down each time would otherwise go round the fleet forever
                self.dead(LeaseState(lease, env), "poison:redelivered",
                          f"{env.lost} deliveries ended without an outcome (a worker died or stalled holding "
                          f"it each time); not fetched again", None)
                continue
            ledger.buffer.append(LeaseState(lease, env))


class Speculation:
    """Start fetching the child that READY would hand out next before it is even in Redis.

    READY is LIFO, so that child is the last one of the highest priority: for a pagination chain, page
    N+1. Queueing it and leasing it back cost a Redis round trip that a busy event loop stretches to
    ~6 ms, a third of a chain step (measured). Instead it goes to the front of the buffer at once, and
    the call that queues the children claims it for this worker (COMMIT's claim: READY -> IN-FLIGHT under
    a lease of ours). Until the claim is confirmed nothing of the fetch is settled (ClassifyMiddleware
    waits for it); if the child was not queued (SEEN: another delivery queued it) or not claimable (held
    or breaker domain), the fetch is dropped unseen."""

    def __init__(self, ledger: Ledger, breakers: Breakers, stats: Any, log: Any, kick: Callable[[], None],
                 release: Callable[[list[tuple[str, str]]], None], proxy_done: Callable[[str], None]) -> None:
        self.ledger = ledger
        self.breakers = breakers
        self.stats = stats
        self.log = log
        self.kick = kick
        self.release = release  # hand back leases at once (a claim confirmed after shutdown)
        self.proxy_done = proxy_done  # the fetch through this proxy ended
        self.gated: Callable[[str], bool] | None = None  # the politeness gate's domains: never speculated
        self.recent = RecentChildren()  # what this worker knows is queued: never speculated on (specpick)

    def finished(self, state: LeaseState, may_speculate: bool) -> None:
        """``state`` finished with children, queued next: the page itself, where its redirects landed and its
        filtered children become known (never speculated on: specpick); before the children do, and when
        ``may_speculate`` (the caller's capacity check), the likeliest new child is speculated on."""
        recent, run = self.recent, state.env.run
        recent.add(run, state.env.fp)
        for hop in state.fetch.hops:
            recent.add(run, hop)
        if may_speculate:
            self._speculate(state)
        for env in state.out.discovered:
            if not env.dont_filter:
                recent.add(env.run, env.fp)

    def _speculate(self, state: LeaseState) -> None:
        """The likeliest next child goes to the front of the buffer, its claim pending."""
        out = state.out
        kids = out.discovered
        k = pick(kids, self.recent)
        if k is None:
            self.stats.inc_value("fleet/speculative_skipped")  # every child already queued, as far as we know
            return
        if not self.breakers.may_speculate(kids[k].domain):
            return
        if self.gated is not None and self.gated(kids[k].domain):
            return  # its fetch must wait for a permit like any other request to that domain
        cid = out.discovered_ids[k]
        local = self.ledger.take_child(cid)
        spec = LeaseState(Lease(cid, b"", 1, ""), kids[k], local[1] if local else None,
                          asyncio.get_running_loop().create_future())
        state.progress.spec, state.progress.spec_index = spec, k + 1
        self.ledger.buffer.appendleft(spec)
        self.stats.inc_value("fleet/speculative")
        self.kick()

    def answered(self, spec: LeaseState, token: str, deliveries: int) -> None:
        """COMMIT's answer to the claim: a token (ours now), or none (void)."""
        fut = spec.claim
        if fut is None or fut.done():
            return
        if not token:
            if deliveries < 0:  # queued but held, behind a breaker or DONE: stop guessing for a while
                self.breakers.pause(spec.env.domain)
            self.void(spec)
            return
        spec.lease.token, spec.lease.deliveries = token, deliveries
        spec.claim = None
        fut.set_result(True)
        ledger = self.ledger
        if ledger.active.get(spec.id) is not spec and all(b is not spec for b in ledger.buffer):
            # handed back while unconfirmed (shutdown): release the lease we now hold
            self.release([(spec.id, token)])

    def void(self, spec: LeaseState) -> None:
        """The speculative lease was not granted: forget it; a fetch in progress is dropped."""
        if spec.claim is not None and not spec.claim.done():
            spec.claim.set_result(False)
        spec.settled = True
        self.stats.inc_value("fleet/speculative_void")
        self.log.info("speculative_dropped", run=spec.env.run, fp=spec.env.fp)
        ledger = self.ledger
        if ledger.active.get(spec.id) is spec:
            del ledger.active[spec.id]
            if spec.request is not None:
                # the fetch itself is marked (not its lease id, which a later lease may reuse): its
                # response or error is dropped when it comes back (drop_void), and the spider's
                # errback never hears of a fetch that was never its request's delivery
                spec.request.meta[VOID_KEY] = True
                spec.request.errback = None
            if spec.fetch.proxy_id:
                self.proxy_done(spec.fetch.proxy_id)
        else:
            with contextlib.suppress(ValueError):
                ledger.buffer.remove(spec)

    @staticmethod
    def drop_void(request: Request) -> bool:
        """True for the response of a speculative fetch whose lease was not granted (drop it)."""
        return bool(request.meta.get(VOID_KEY))

    @staticmethod
    async def confirmed(state: LeaseState) -> bool:
        """Wait until Redis confirmed a speculative lease; False: it is not ours, settle nothing."""
        fut = state.claim
        return True if fut is None else await fut

"""The worker runtime: leases, the per-request ledger, settlement and batched commits.

Scrapy has no notion of "this request is finished" (every item passed the pipelines, every child
request known). The runtime keeps a ledger per leased request and settles it exactly once:

* ok     → write the items object (and raw body) → record DONE + enqueue children → ack
* A / B  → nack to DELAYED (backoff data in Redis, no sleeping in the worker)
* D      → DLQ with evidence
* release (shutdown) → back to READY at once

Redis and the object store are called off the reactor thread's critical path: Redis through
``redis.asyncio`` on the reactor's own asyncio loop, the object store in a bounded thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.offsite import OffsiteMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.httpobj import urlparse_cached

from scraper import drift, log, redisio, storehealth
from scraper.alerts import Alerter
from scraper.backoff import retry_delay
from scraper.config import FleetConfig
from scraper.envelope import META_KEY, Envelope, EnvelopeError
from scraper.filewriter import FileWriter
from scraper.objects import (
    JSON_SCALARS,
    ObjectWriter,
    WriteContext,
    encode_items,
    item_to_dict,
    items_key,
    raw_key,
)
from scraper.proxies import ProxyPool, parse_proxies
from scraper.queue import Commit, FleetQueue, Lease, LeaseBatch, new_id
from scraper.redisio import REDIS_ERRORS
from scraper.store import InvalidKeyError, LocalStore, open_store
from scraper.taxonomy import A, B, C, D, Verdict
from scraper.tuning import tune_gc
from scraper.urls import refusal

# Answers that mean "this whole site wants you to slow down".
DOMAIN_SLOWDOWN_STATUS = frozenset({429, 503})

_EVIDENCE_HEADERS = ("content-type", "server", "retry-after", "cf-mitigated", "location", "cf-ray",
                     "content-encoding", "content-length")


WriteResult = tuple[str | None, BaseException | None]  # (items key, error) of one request
NOSPEC_SECONDS = 10.0  # no speculative fetch into a domain for this long after Redis refused a claim there
DELIVERY_KEY = "_fleet_delivery"  # request meta: which delivery of a lease a request belongs to
VOID_KEY = "_fleet_void"  # request meta: a speculative fetch whose lease was not granted
# bound of FleetRuntime._local: the newest children, which READY (LIFO) hands out first; older ones are
# rebuilt from their JSON. 4096 held ~2,000 entries behind a running pagination chain (measured): more
# memory and GC work for no measurable gain.
LOCAL_REQUESTS = 256
STORE_THREADS = 8  # parallel PUTs to a remote store; a local store uses one at a time (group commit)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(eq=False, slots=True)  # identity: states are looked up in the buffer; one per page
class LeaseState:
    """The ledger of one leased request, from lease to settlement."""

    lease: Lease
    env: Envelope
    request: Request | None = None
    pending: int = 0
    exhausted: bool = False
    settled: bool = False
    items: list[Any] = field(default_factory=list)
    discovered: list[Envelope] = field(default_factory=list)
    discovered_ids: list[str] = field(default_factory=list)  # their queue ids (see FleetRuntime._local)
    local: Request | None = None  # the Request its parent's callback built, if it may be reused as is
    status: int | None = None
    body: bytes = b""
    fetched_at: str | None = None
    fetch_started: float = field(default_factory=time.monotonic)
    proxy_id: str | None = None
    errors: list[str] = field(default_factory=list)
    enqueued: int = 0
    write_raw: bool = False
    children_pending: bool = False  # its discovered requests are being queued; DONE + ack wait for that
    written: bool = False  # its objects are durable
    writes: tuple[int, ...] = ()  # local store: the tickets of its puts to the writer (FileWriter.result)
    # A speculative lease (see FleetRuntime._speculate): set while Redis has not yet confirmed that this
    # worker holds it; True once claimed (then None), False if it was not (void: the fetch is dropped).
    claim: asyncio.Future[bool] | None = None
    spec: LeaseState | None = None  # the child this request's commit claims (1-based ``spec_index``)
    spec_index: int = 0
    delivery: int = 0  # this worker's serial of this delivery (request meta DELIVERY_KEY): see state_for

    @property
    def id(self) -> str:
        return self.lease.id


def _plain(d: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) in JSON_SCALARS for k, v in d.items())


def _leases(states: Iterable[LeaseState]) -> list[tuple[str, str]]:
    """(id, token) of the leases Redis has confirmed (not speculative fetches still waiting for theirs)."""
    return [(s.lease.id, s.lease.token) for s in states if s.claim is None]


def _reusable(request: Request, env: Envelope) -> bool:
    """Whether ``env.to_request`` would rebuild ``request`` exactly: a plain Request, nothing left out of
    the envelope (runtime or non-JSON meta, cookies, flags, another encoding) and meta / cb_kwargs that
    JSON leaves as they are (str keys, scalar values)."""
    return (type(request) is Request and not request.flags and not request.cookies
            and request.encoding == "utf-8"
            and len(env.meta) == len(request.meta) - ("depth" in request.meta)
            and _plain(env.meta) and _plain(request.cb_kwargs))


class FleetRuntime:
    """One per crawler (``crawler.fleet``); created by the scheduler."""

    def __init__(self, crawler: Crawler, config: FleetConfig, redis_url: str) -> None:
        self._deliveries = 0  # serial of the deliveries this worker started (state_for)
        self.crawler = crawler
        self.config = config
        self.redis_url = redis_url
        self.stats = crawler.stats
        self.worker_id = config.worker_id
        self.concurrency = int(crawler.settings.getint("CONCURRENT_REQUESTS"))
        # a small local buffer: deep buffers delay newly discovered (LIFO-first) work behind old leases
        self.prefetch = config.prefetch if config.prefetch is not None else max(4, self.concurrency // 4)
        self.until_idle: float | None = crawler.settings.getfloat("FLEET_UNTIL_IDLE", -1.0)
        if self.until_idle is not None and self.until_idle < 0:
            self.until_idle = None
        self.crash_at = os.environ.get("FLEET_TEST_CRASH_AT", "")
        self.spider: Spider | None = None
        self.queue: FleetQueue | None = None
        self.proxies: ProxyPool = ProxyPool([])
        self.client: aioredis.Redis | None = None
        self.writer = ObjectWriter(open_store(config.store))
        # a local store writes through a child process; a remote one (S3) through the thread pool
        store = self.writer.store
        self.filewriter = FileWriter(f"file://{store.root.resolve()}") if isinstance(store, LocalStore) else None
        self.pool = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="fleet-store")
        self.buffer: deque[LeaseState] = deque()
        self.active: dict[str, LeaseState] = {}
        self.commits: list[tuple[LeaseState, Commit]] = []
        self.log = log.get_logger(worker=self.worker_id)
        self.alerter = Alerter(config.alert_webhook)
        self.stopping = False  # no more leasing (shutdown)
        self.releasing = False  # closing: unfinished work is released, never failed or retried
        self.grace_deadline: float | None = None
        self.store_outage = storehealth.StoreOutage(config.store_outage_max)
        # requests whose objects a store outage refused: written again once it is back, released at exit
        self._store_held: list[LeaseState] = []
        self._store_probe: asyncio.Future[BaseException | None] | None = None  # the probe write in flight
        self.closed = False
        self.idle_since: float | None = None
        self.exit_code = 0
        self.fatal: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()  # the feeder has something to do: the buffer runs low, or new work
        # new work may be in READY (our commit queued children, a wake message): what ends the wait after
        # a LEASE that found nothing. A low buffer alone does not: READY was empty a moment ago, and
        # asking again at once, on every turn of the engine, was half of all LEASE calls (make bench c)
        self._supply = asyncio.Event()
        self._commit_wake = asyncio.Event()
        self._inflight_writes: set[asyncio.Task[Any]] = set()
        self._offsite: OffsiteMiddleware | None = None  # the spider's allowed_domains (see discovered)
        # domain -> monotonic time until which no speculative fetch goes there (held, breaker)
        self._nospec: dict[str, float] = {}
        # children this worker discovered, by queue id: (envelope, the callback's Request), oldest first
        self._local: dict[str, tuple[Envelope, Request]] = {}
        self.to_write: list[tuple[LeaseState, WriteResult | None]] = []  # objects not yet durable
        self._writing = 0  # write batches in flight (writer-process barriers or S3 thread jobs)
        self._redis_down_since: float | None = None
        self._last_beat = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self, spider: Spider) -> None:
        self.spider = spider
        self.client = redisio.client(
            self.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        self.queue = FleetQueue(
            self.client, spider.name, dedup_ttl=self.config.dedup_ttl,
            breaker=self.config.breaker_params(),
        )
        self.proxies = ProxyPool(parse_proxies(self.config.proxies), self.client)
        self.log = self.log.bind(spider=spider.name)
        if getattr(spider, "allowed_domains", None):
            self._offsite = OffsiteMiddleware(self.stats)
            self._offsite.crawler = self.crawler
            self._offsite.host_regex = self._offsite.get_host_regex(spider)
        await self.client.sadd("fleet:spiders", spider.name)
        if self.filewriter is not None:
            await self.filewriter.start()
        tune_gc()
        self._tasks = [
            asyncio.ensure_future(self._feeder()),
            asyncio.ensure_future(self._committer()),
            asyncio.ensure_future(self._keeper()),
            asyncio.ensure_future(self._listen()),
        ]
        self.log.info("worker_started", concurrency=self.concurrency, prefetch=self.prefetch)

    async def close(self, reason: str) -> None:
        self.stopping = True
        if self.grace_deadline is None:
            self.grace_deadline = time.monotonic() + self.config.shutdown_grace
        # settled requests finish their writes and commits within what is left of the grace period
        while (self._inflight_writes or self.commits or self.to_write) and time.monotonic() < self.grace_deadline:
            self._commit_wake.set()
            await asyncio.sleep(0.02)
        self.releasing = True  # the loops end on this flag: asyncio.wait_for can swallow a cancel (3.11)
        self._news()
        self._commit_wake.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        if self.commits:
            await self._flush_commits()
        await self._release_all(reason)
        if self.filewriter is not None:
            await self.filewriter.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            await self.client.aclose()
        self.alerter.close()
        self.closed = True
        self.log.info("worker_stopped", reason=reason, exit_code=self.exit_code)

    async def _release_buffered(self, leases: list[tuple[str, str]]) -> None:
        assert self.queue is not None
        n = await self._redis_retry(lambda: self.queue.release(leases))  # type: ignore[union-attr]
        self.stats.inc_value("fleet/released", n or 0)
        self.log.info("leases_released", count=n, reason="shutdown", buffered=True)

    async def _release_all(self, reason: str) -> None:
        """Every lease not acknowledged goes back to the front of READY now, not at expiry."""
        leftovers = _leases([*self.buffer, *self.active.values()])
        self.buffer.clear()
        if not leftovers or self.queue is None:
            return
        try:
            n = await self.queue.release(leftovers)
            self.stats.inc_value("fleet/released", n)
            self.log.info("leases_released", count=n, reason=reason)
        except REDIS_ERRORS as exc:
            self.log.warning("leases_not_released", count=len(leftovers), error=type(exc).__name__)

    async def release_now(self, reason: str) -> None:
        """Hand every lease back at once (the last step before a forced exit: a callback that never
        returns keeps Scrapy's engine, and so :meth:`close`, from ever finishing)."""
        self.releasing = True
        await self._release_all(reason)
        log.flush()

    def engine_kick(self) -> None:
        engine = self.crawler.engine
        slot = getattr(engine, "_slot", None) if engine is not None else None
        if slot is not None and slot.nextcall is not None:
            slot.nextcall.schedule()

    def request_stop(self, reason: str = "signal") -> None:
        """Stop leasing and hand back the local buffer at once; in-flight requests get the grace
        period (FLEET_SHUTDOWN_GRACE) to finish, after which :meth:`close` releases the rest."""
        if self.stopping:
            return
        self.stopping = True
        self.grace_deadline = time.monotonic() + self.config.shutdown_grace
        self.log.info("shutdown_requested", reason=reason, inflight=len(self.active),
                      buffered=len(self.buffer), grace_s=self.config.shutdown_grace)
        buffered = _leases(self.buffer)
        self.buffer.clear()
        if buffered and self.queue is not None:
            self._spawn(self._release_buffered(buffered))
        self._news()
        self.engine_kick()

    # -- leasing ----------------------------------------------------------------------------------

    def _news(self) -> None:
        """New work may be in READY (or the flags changed): end the feeder's wait, whichever it is."""
        self._supply.set()
        self._wake.set()

    def held(self) -> int:
        return len(self.buffer) + len(self.active)

    def next_state(self) -> LeaseState | None:
        while self.buffer:
            state = self.buffer.popleft()
            if len(self.buffer) < max(1, self.prefetch // 2):
                self._wake.set()
            try:
                req = state.local if state.local is not None else state.env.to_request(self.spider)
                state.local = None
            except EnvelopeError as exc:
                self._spawn(self._dead(state, "bad_envelope", str(exc)))
                continue
            req.meta[META_KEY] = state.id
            self._deliveries += 1
            state.delivery = req.meta[DELIVERY_KEY] = self._deliveries
            state.request = req
            state.fetch_started = time.monotonic()
            self.active[state.id] = state
            self.stats.inc_value("fleet/leased")
            self.log.info(
                "request_leased", run=state.env.run, fp=state.env.fp, attempt=state.lease.deliveries
            )
            return state
        self._wake.set()
        return None

    def state_for(self, request: Request) -> LeaseState | None:
        """The ledger of the delivery ``request`` belongs to, or None.

        The lease id alone is not enough: a request settled by the watchdog can be delivered again (same
        id) while its first delivery's callback still runs; that callback's items and errors must not
        reach the new delivery's ledger. Redirects keep the delivery serial (``Request.replace`` copies
        meta)."""
        key = request.meta.get(META_KEY)
        if not isinstance(key, str):
            return None
        state = self.active.get(key)
        if state is not None and request.meta.get(DELIVERY_KEY, state.delivery) != state.delivery:
            return None
        return state

    async def _feeder(self) -> None:
        assert self.queue is not None
        idle = 0.05
        while not self.releasing:
            if self.store_outage.down and not self.stopping:
                await self._probe_store()
                continue
            # requests already answered only wait for their writes and commit: they use no download
            # slot, so they do not count against the fetch budget (bounded separately, 4x concurrency)
            fetching = len(self.buffer) + sum(1 for s in self.active.values() if s.status is None and not s.settled)
            want = min(self.prefetch + self.concurrency - fetching,
                       self.prefetch + 4 * self.concurrency - self.held())
            if self.stopping or self.fatal or want < max(1, self.prefetch // 4):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            # cleared before the call: a wake-up that arrives while it is on the wire (work queued after
            # Redis ran this LEASE, or a local commit) must start the next lease, not be lost
            self._wake.clear()
            self._supply.clear()
            try:
                if time.monotonic() - self._last_beat > self.config.lease_seconds / 2:
                    await self._beat()  # after a stall, renew ours before the reaper sees them expired
                batch = await self.queue.lease(
                    want, worker=self.worker_id, lease_seconds=self.config.lease_seconds
                )
            except REDIS_ERRORS as exc:
                await self._redis_trouble(exc)
                continue
            self._redis_ok()
            self._adopt(batch)
            self.stats.inc_value("fleet/lease_calls")
            if batch.leased:
                idle = 0.05
                self.idle_since = None
                self.engine_kick()
            else:
                self.stats.inc_value("fleet/lease_empty")
            if batch.remaining == 0:
                # READY is empty: the next LEASE waits for news of work (our commit queued children, or
                # the wake channel), or for the idle poll, which finds what arrives unannounced. A batch
                # that was all held, parked or done leased nothing from a READY that still has work:
                # ask again at once (each LEASE takes its batch out of READY, so this ends)
                try:
                    await asyncio.wait_for(self._supply.wait(), timeout=idle * (0.5 + random.random()))
                except asyncio.TimeoutError:
                    pass
                if not batch.leased:
                    idle = min(0.4, idle * 2)

    async def _listen(self) -> None:
        """Wake the feeder when work reaches READY while this worker waits for some (lua.py: wake).

        Why: an idle worker polls every 50-400 ms, and by then the worker that queued the work has
        leased it itself. On a pagination chain the second of two workers fetched 3 % of the pages
        (make bench, d) and the first set the pace alone. Best effort: a lost message (Redis
        restarting, a reconnect) costs one poll interval, never a request."""
        assert self.client is not None and self.queue is not None
        while not self.releasing:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.queue.keys.wake)
                while not self.releasing:
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0) is not None:
                        self.stats.inc_value("fleet/woken")
                        self._news()
            except REDIS_ERRORS:
                await asyncio.sleep(1.0)  # the feeder reports Redis trouble; it polls meanwhile
            except RedisError as exc:  # e.g. an ACL without SUBSCRIBE on fleet:* channels
                self.log.warning("wake_channel_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
                return  # the feeder's idle polling still finds the work, up to 0.4 s later
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _adopt(self, batch: LeaseBatch) -> None:
        """Take a lease batch into the local buffer."""
        self._log_reaped(batch.reaped)
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
        for lease in batch.leased:
            mine = self.active.get(lease.id) or next((b for b in self.buffer if b.id == lease.id), None)
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
            local = self._local.pop(lease.id, None)
            if local is not None and lease.deliveries == 1:  # a first delivery of a child we discovered
                self.buffer.append(LeaseState(lease=lease, env=local[0], local=local[1]))
                continue
            try:
                env = Envelope.loads(lease.raw)
                if self.spider is not None and env.spider != self.spider.name:
                    raise EnvelopeError(f"entry is for spider {env.spider!r}, not {self.spider.name!r}",
                                        run=env.run)
            except EnvelopeError as exc:
                # settled on its own: the rest of the batch goes on (its run, when usable, is kept so
                # `fleet run` counts the DLQ entry)
                st = LeaseState(lease=lease, env=Envelope(url="", spider="", run=exc.run, fp=""))
                self._spawn(self._dead(st, "bad_envelope", str(exc), raw=lease.raw))
                continue
            if self.config.max_lost_deliveries and env.lost >= self.config.max_lost_deliveries:
                # its leases expired that often (the reaper counts them): a page that takes its worker
                # down each time would otherwise go round the fleet forever
                self._spawn(self._dead(LeaseState(lease=lease, env=env), "poison:redelivered",
                                       f"{env.lost} deliveries ended without an outcome (a worker died or "
                                       f"stalled holding it each time); not fetched again"))
                continue
            self.buffer.append(LeaseState(lease=lease, env=env))

    async def _beat(self) -> None:
        assert self.queue is not None
        self._last_beat = time.monotonic()
        held = _leases([*self.buffer, *self.active.values()])
        lost = await self.queue.heartbeat(held, self.config.lease_seconds)
        for lid in lost:
            if lid not in self.active and all(b.id != lid for b in self.buffer):
                continue  # acknowledged while the heartbeat was on the wire
            self.stats.inc_value("fleet/lease_lost")
            self.log.warning("lease_lost", lease=lid)

    def _forget(self, state: LeaseState) -> None:
        if self.active.get(state.id) is state:
            del self.active[state.id]

    def _log_reaped(self, reaped: list[tuple[str, str]]) -> None:
        for lid, owner in reaped:
            self.stats.inc_value("fleet/reaped")
            self.log.warning("lease_expired", lease=lid, owner=owner)

    async def _keeper(self) -> None:
        """Heartbeats live leases, reaps others' expired ones, and watches for idleness."""
        assert self.queue is not None
        beat_every = max(0.05, self.config.lease_seconds / 3)
        while not self.releasing:
            await asyncio.sleep(min(0.5, beat_every))
            log.flush()
            touched = False
            try:
                if time.monotonic() - self._last_beat >= beat_every:
                    await self._beat()
                    _, reaped = await self.queue.maintain()
                    self._log_reaped(reaped)
                    touched = True
                if self.proxies:
                    await self.proxies.flush()
                if self.until_idle is not None:
                    pending = await self.queue.pending()
                    touched = True
                    if pending == 0 and not self.held() and not self.commits:
                        if self.idle_since is None:
                            self.idle_since = time.monotonic()
                        elif time.monotonic() - self.idle_since >= self.until_idle:
                            self.engine_kick()
                    else:
                        self.idle_since = None
                if touched:  # only a Redis call that succeeded proves Redis is back
                    self._redis_ok()
            except REDIS_ERRORS as exc:
                await self._redis_trouble(exc)

    def may_close(self) -> bool:
        """Answer to Scrapy's spider_idle: close only on shutdown or a long-enough empty queue."""
        if self.fatal:
            return True
        if self.held() or self.commits or self._inflight_writes or self.to_write:
            return False
        if self.stopping:
            return True
        if self.until_idle is not None and self.idle_since is not None:
            return time.monotonic() - self.idle_since >= self.until_idle
        return False

    # -- object-store outages ---------------------------------------------------------------------

    def _store_trouble(self, exc: BaseException) -> None:
        """A probe write failed: the store itself is down (or refuses us). Counted and logged with the
        reason (redacted) when the outage starts; the feeder leases nothing until it is back."""
        if self.store_outage.begin(exc):
            self.stats.inc_value("fleet/store/outages")
            self.log.warning("store_unavailable", error=type(exc).__name__, reason=self.store_outage.reason,
                             outage_max_s=self.store_outage.limit)
        self.stats.inc_value("fleet/store/probes_failed")

    async def _check_store(self) -> BaseException | None:
        """One probe write (``_fleet/probe/<worker>``): None if the store took it, else its error.
        Concurrent callers share the probe in flight (eight failed S3 PUTs ask one question)."""
        if self._store_probe is None or self._store_probe.done():
            async def probe() -> BaseException | None:
                try:
                    await self._in_pool(self.writer.store.put, storehealth.probe_key(self.worker_id), b"ok")
                    return None
                except Exception as exc:
                    return exc
            self._store_probe = asyncio.ensure_future(probe())
        return await asyncio.shield(self._store_probe)

    async def _probe_store(self) -> None:
        """While the store is down, lease nothing: every fetch would fail and burn A budgets. Past
        FLEET_STORE_OUTAGE_MAX the worker gives up (exit 3); close() releases every lease it holds."""
        await asyncio.sleep(1.0)
        exc = await self._check_store()
        if exc is not None:
            self._store_trouble(exc)
            if self.store_outage.exceeded() and not self.fatal:
                outage = self.store_outage
                self.fatal = (
                    f"object store unavailable for more than {outage.limit:.0f}s (FLEET_STORE_OUTAGE_MAX): "
                    f"{outage.reason[:200]}; giving up. Check FLEET_STORE, its credentials and free space."
                )
                self.exit_code = 3
                self.log.error("store_outage_exceeded", seconds=round(outage.elapsed(), 1), reason=outage.reason,
                               probes_failed=outage.probes_failed, held=len(self._store_held))
                self.request_stop("store_outage")
            return
        if not self.store_outage.down:
            return
        down = self.store_outage.end()
        self.log.warning("store_recovered", down_s=round(down, 2), held=len(self._store_held))
        held, self._store_held = self._store_held, []
        for state in held:  # their objects are written again: no fetch, no budget spent
            if self.active.get(state.id) is state:
                self._queue_write(state)

    # -- redis outages ----------------------------------------------------------------------------

    async def _redis_trouble(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._redis_down_since is None:
            self._redis_down_since = now
            self.log.warning("redis_unavailable", error=type(exc).__name__)
        elif now - self._redis_down_since > self.config.redis_outage_max and not self.fatal:
            self.fatal = (
                f"Redis unreachable for more than {self.config.redis_outage_max:.0f}s "
                f"(FLEET_REDIS_OUTAGE_MAX); giving up. Check FLEET_REDIS_URL and the Redis server."
            )
            self.exit_code = 3
            self.log.error("redis_outage_exceeded", seconds=round(now - self._redis_down_since, 1))
            self.request_stop("redis_outage")
        await asyncio.sleep(min(2.0, 0.1 * (2 ** min(5, int(now - self._redis_down_since)))))

    def _redis_ok(self) -> None:
        if self._redis_down_since is not None:
            self.log.warning(
                "redis_recovered", down_s=round(time.monotonic() - self._redis_down_since, 2)
            )
            self._redis_down_since = None

    # -- the ledger -------------------------------------------------------------------------------

    def fetched(self, state: LeaseState, response: Response, verdict: Verdict) -> None:
        state.status = response.status
        state.fetched_at = _now_iso()
        state.body = response.body
        elapsed = int((time.monotonic() - state.fetch_started) * 1000)
        if state.proxy_id and self.proxies:
            self.proxies.finished(state.proxy_id)
            if verdict.cls not in (B,):
                self.proxies.success(state.proxy_id, state.env.domain, float(elapsed))
        self.log.info(
            "request_fetched", run=state.env.run, fp=state.env.fp, status=response.status,
            elapsed_ms=elapsed, attempt=state.lease.deliveries, proxy=state.proxy_id,
        )

    def defer(self, state: LeaseState, until: float, reason: str) -> None:
        """Put a request back in DELAYED without using any budget (e.g. every proxy cooling)."""
        if state.settled:
            return
        state.settled = True
        self.stats.inc_value("fleet/deferred")
        self.log.info("request_deferred", run=state.env.run, fp=state.env.fp, reason=reason,
                      until=round(until, 3))

        async def go() -> None:
            if not await self._confirmed(state):
                return
            await self._redis_retry(
                lambda: self.queue.nack(state.id, state.lease.token, state.env, until)  # type: ignore[union-attr]
            )
            self._forget(state)

        self._spawn(go())

    def item_started(self, state: LeaseState) -> None:
        state.pending += 1

    def item_settled(self, state: LeaseState, item: Any | None) -> None:
        state.pending -= 1
        if item is not None:
            state.items.append(item)
        self.maybe_finish(state)

    def item_failed(self, state: LeaseState, exc: BaseException) -> None:
        """A pipeline raised: the request is not finished cleanly, so it is not acknowledged as ok."""
        state.pending -= 1
        state.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        self.maybe_finish(state)

    def _off_site(self, request: Request, dont_filter: bool) -> bool:
        """The spider's allowed_domains refuse ``request`` (counted); ``dont_filter`` and meta
        ``allow_offsite`` exempt it, as in Scrapy's offsite middleware."""
        if self._offsite is None or self.spider is None or dont_filter or request.meta.get("allow_offsite") \
                or self._offsite.should_follow(request, self.spider):
            return False
        self.stats.inc_value("fleet/offsite_filtered")
        return True

    def discovered(self, state: LeaseState, request: Request) -> None:
        refused = refusal(request.url, self.config.schemes)
        if refused is not None:
            # a link to file://, ftp://, javascript:… or one without a host: never queued, never retried
            # (middlewares.schemes refuses it again before any download)
            self.stats.inc_value("fleet/discovered_refused")
            self.log.info("request_refused", parent=state.env.fp, reason=refused.reason, detail=str(refused))
            return
        if self._off_site(request, request.dont_filter):
            # the spider's allowed_domains, applied where the request is found: a queued request is
            # always fetched (dont_filter), so Scrapy's offsite check would never see it again
            self.log.info("request_offsite", parent=state.env.fp, host=urlparse_cached(request).hostname)
            return
        try:
            env = Envelope.from_request(
                request, spider_name=state.env.spider, run=state.env.run, spider=self.spider
            )
        except EnvelopeError as exc:
            self.stats.inc_value("fleet/discovered_rejected")
            self.log.error("request_rejected", reason=str(exc), parent=state.env.fp)
            return
        env.parent = state.env.fp
        cid = new_id()
        state.discovered.append(env)
        state.discovered_ids.append(cid)
        if _reusable(request, env):
            # what env.to_request would build, to the letter: if this worker leases the child itself
            # (READY is LIFO, it mostly does), this very Request is used instead of the envelope's JSON
            # parsed and rebuilt (~12 µs a page)
            request.dont_filter = True  # as to_request: dedup is SEEN/DONE's job
            if len(self._local) >= LOCAL_REQUESTS:
                del self._local[next(iter(self._local))]
            self._local[cid] = (env, request)

    def offsite_continuation(self, state: LeaseState, request: Request) -> bool:
        """True (and the request is settled as ignored) for a redirect of a queued request to a host
        outside the spider's allowed_domains. Scrapy's own check skips it: the redirect inherits the
        ``dont_filter`` every queued request is fetched with; the envelope keeps the spider's own."""
        if not self._off_site(request, state.env.dont_filter):
            return False
        host = urlparse_cached(request).hostname
        self.ignored(state, IgnoreRequest(f"offsite redirect to {host}"))
        return True

    def output_done(self, state: LeaseState) -> None:
        state.exhausted = True
        self.maybe_finish(state)

    def maybe_finish(self, state: LeaseState) -> None:
        if state.settled or not state.exhausted or state.pending > 0:
            return
        state.settled = True
        self._finish(state)

    def callback_failed(self, state: LeaseState, exc: BaseException) -> None:
        if state.settled or self.releasing:
            return
        state.settled = True
        if drift.is_item_callback(self.spider, state.env.callback):
            # an item callback that crashes on a 200 page is the classic symptom of layout drift
            self._spawn(self._drift(state, f"callback_error:{type(exc).__name__}", ()))
            return
        self.stats.inc_value(f"fleet/class/{D}")
        self._spawn(self._dead(state, f"callback_error:{type(exc).__name__}", str(exc)[:500]))

    def ignored(self, state: LeaseState, exc: BaseException) -> None:
        """Another component dropped the request (offsite, robots…): nothing to retry; ack it."""
        state.settled = True
        self.stats.inc_value("fleet/ignored")
        self.log.info("request_ignored", run=state.env.run, fp=state.env.fp, reason=str(exc)[:200])
        self.commits.append((state, Commit(state.id, state.lease.token, state.env.run, state.env.fp)))
        self._commit_wake.set()

    def fail(self, state: LeaseState, verdict: Verdict, response: Response | None) -> None:
        if state.settled or self.releasing:
            return
        state.settled = True
        if response is None and state.proxy_id and self.proxies:
            self.proxies.finished(state.proxy_id)
        self.stats.inc_value(f"fleet/class/{verdict.cls}")
        self.log.info(
            "request_classified", run=state.env.run, fp=state.env.fp, cls=verdict.cls,
            reason=verdict.reason, attempt=state.lease.deliveries,
            **({"detail": verdict.detail} if verdict.detail else {}),
        )
        self._spawn(self._settle_failure(state, verdict, response))

    # -- settlement -------------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as one of the runtime's tasks (kept referenced; its failure is logged)."""
        self._spawn(coro)

    def proxy_chosen(self, state: LeaseState, proxy_id: str) -> None:
        """The proxy middleware routed this request through ``proxy_id`` (its outcome is that proxy's)."""
        state.proxy_id = proxy_id

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._inflight_writes.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._inflight_writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("settle_error", error=repr(task.exception()))
        self.engine_kick()

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _ctx(self, state: LeaseState) -> WriteContext:
        spider = self.spider
        return WriteContext(
            spider=state.env.spider,
            spider_version=str(getattr(spider, "version", "0")),
            run=state.env.run,
            fp=state.env.fp,
            url=state.env.url,
            worker_id=self.worker_id,
            attempt=state.lease.deliveries,
            attempts=dict(state.env.attempts),
            proxy_id=state.proxy_id,
            fetched_at=state.fetched_at or _now_iso(),
        )

    def _finish(self, state: LeaseState) -> None:
        """The callback and every item are done: queue the objects for the writer (or commit at once)."""
        env = state.env
        if state.errors:
            self.stats.inc_value(f"fleet/class/{D}")
            self._spawn(self._dead(state, "pipeline_error", "; ".join(state.errors)[:500]))
            return
        verdict = drift.check(self.spider, env.callback, state.items)
        if verdict is not None:
            self._spawn(self._drift(state, verdict.reason, verdict.missing))
            return
        if state.discovered:
            # children go to Redis now, in a call of their own, before the parent's writes: SEEN makes a
            # redelivered parent's rediscovery a no-op, so enqueueing early is safe, and a pagination
            # chain moves at the speed of one Redis call per page (queued behind the committer's acks,
            # page N+1 waited ~7.6 ms of a ~23 ms chain step). The parent's own commit (DONE + ack) waits
            # for this one: a parent is never acknowledged before its children are queued.
            state.children_pending = True
            self._speculate(state)
            self._spawn(self._queue_children(state))
        raw_mode = self.config.store_raw
        state.write_raw = bool(state.body) and (raw_mode == "all" or (raw_mode == "items" and bool(state.items)))
        if not (state.items or state.write_raw):
            self._written(state)
            return
        self._queue_write(state)

    def _queue_write(self, state: LeaseState) -> None:
        """Queue the request's objects for the store (again, after a store outage)."""
        if self.filewriter is not None:
            # local files go to the writer process (scraper.filewriter): the reactor thread only
            # encodes the items and copies bytes into a pipe; creating files, gzip and syncfs run on
            # the other core. (On this thread they cost 40 µs to >1 ms of kernel time per page; in a
            # store thread every syscall hands the GIL back and forth: measured slower still.)
            state.writes = ()
            try:
                ctx = self._ctx(state)
                key = None
                puts: list[tuple[str, bytes, bool]] = []
                if state.items:
                    key = items_key(ctx.spider, ctx.run, ctx.fp)
                    puts.append((key, encode_items(ctx, state.items), False))
                if state.write_raw:
                    puts.append((raw_key(ctx.spider, ctx.run, ctx.fp), state.body, True))
                # keys and bytes first: a bad key (InvalidKeyError) leaves no put behind in the pipe
                state.writes = tuple(self.filewriter.put(k, data, gzip=gz) for k, data, gz in puts)
                self.to_write.append((state, (key, None)))
            except Exception as exc:
                self.to_write.append((state, (None, exc)))
        else:
            self.to_write.append((state, None))
        self._pump_writes()

    def _pump_writes(self) -> None:
        """Hand written objects to a store thread for durability, in batches.

        A local store makes a whole batch durable with one syncfs (group commit); batches form by
        themselves: whatever was written while the previous flush ran. Remote stores (S3) PUT one
        request's objects per thread job, up to STORE_THREADS in parallel: there each PUT is a network
        round trip and durable when it returns."""
        width, size = (1, self.config.commit_batch) if self.filewriter is not None else (STORE_THREADS, 1)
        while self.to_write and self._writing < width:
            batch, self.to_write = self.to_write[:size], self.to_write[size:]
            self._writing += 1
            self._spawn(self._write_batch(batch))

    def _write_objects(self, batch: list[tuple[LeaseState, WriteContext]]) -> list[WriteResult]:
        """Remote store (S3) PUTs of the batch, each durable when it returns; an error is kept per
        request (it is retried on its A budget)."""
        out: list[WriteResult] = []
        for state, ctx in batch:
            try:
                key = None
                if state.items:
                    key = self.writer.write_items(ctx, state.items)
                if state.write_raw:
                    self.writer.write_raw(ctx.spider, ctx.run, ctx.fp, state.body)
                out.append((key, None))
            except Exception as exc:
                out.append((None, exc))
        return out

    async def _sync_local(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> list[WriteResult]:
        """One writer barrier for the batch (one syncfs), then each request's own outcome: a put that
        failed fails its request only, the others' objects are durable (FileWriter.result)."""
        assert self.filewriter is not None
        with contextlib.suppress(Exception):  # a barrier that failed as a whole: result() says so per put
            await self.filewriter.sync()
        results: list[WriteResult] = []
        for state, res in batch:
            key, exc = res or (None, None)
            for ticket in state.writes:  # every ticket is asked for once, even after a failed one
                err = self.filewriter.result(ticket)
                exc = exc or err
            state.writes = ()
            results.append((None, exc) if exc is not None else (key, None))
        return results

    async def _write_batch(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> None:
        results: list[WriteResult]
        try:
            if self.filewriter is not None:
                results = await self._sync_local(batch)
            else:
                try:
                    results = await self._in_pool(self._write_objects, [(st, self._ctx(st)) for st, _ in batch])
                except Exception as pool_exc:  # the pool itself failed (shutdown): nothing was confirmed
                    results = [(None, pool_exc) for _ in batch]
        finally:
            self._writing -= 1
        self._pump_writes()
        if self.crash_at == "after_write" and any(exc is None for _, exc in results):
            os.kill(os.getpid(), signal.SIGKILL)
        failed: list[tuple[LeaseState, BaseException]] = []
        for (state, _), (key, exc) in zip(batch, results, strict=True):
            if exc is not None:
                failed.append((state, exc))
                continue
            if state.items:
                self.stats.inc_value("fleet/objects")
                self.log.info("object_written", run=state.env.run, fp=state.env.fp, key=key, items=len(state.items))
            self._written(state)
        if failed:
            await self._write_failed(failed)
        # no wake-up here: acks wait up to FLEET_COMMIT_INTERVAL to share one Redis call (they are on
        # no critical path; children, which are, go in a call of their own: _queue_children)

    async def _write_failed(self, failed: list[tuple[LeaseState, BaseException]]) -> None:
        """Settle requests whose objects were not stored, each on its own.

        A key the store refuses (a run like ``../../x``) can never be written: DLQ (D, bad_envelope).
        Any other failure is the object's or the store's: one probe write tells which. Store down:
        the requests are held, their leases kept alive, and written again when it is back (no fetch
        and no retry budget spent), or released when the worker gives up. Store up: the object's own
        failure, retried on that request's A budget alone."""
        others = []
        for state, exc in failed:
            env = state.env
            why = storehealth.reason(exc)
            self.stats.inc_value("fleet/store/write_failed")
            if isinstance(exc, InvalidKeyError):
                self.stats.inc_value("fleet/store/key_refused")
                self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                                 reason=why, cls=D)
                self.stats.inc_value(f"fleet/class/{D}")
                self._spawn(self._dead(state, "bad_envelope", f"object key refused: {why}"))
            else:
                others.append((state, exc, why))
        if not others:
            return
        outage = self.store_outage.down
        if not outage and not (self.releasing or self.fatal):
            probe_exc = await self._check_store()
            if probe_exc is not None:
                self._store_trouble(probe_exc)
                outage = True
        for state, exc, why in others:
            env = state.env
            if outage or self.releasing or self.fatal:
                self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                                 reason=why, held=True)
                self._store_held.append(state)  # its lease stays ours (heartbeats) until written or released
                continue
            self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                             reason=why, cls=A)
            self._spawn(self._settle_failure(state, Verdict(A, f"store:{type(exc).__name__}"), None))

    def _written(self, state: LeaseState) -> None:
        """Objects are durable (or there were none): the request may be marked DONE and acknowledged
        (once its children, if any, are queued)."""
        state.written = True
        if state.children_pending:
            return
        env = state.env
        outcome = ""
        if drift.tracks_drift(self.spider):
            outcome = "o" if drift.is_item_callback(self.spider, env.callback) or state.items else "n"
        self.commits.append((state, Commit(state.id, state.lease.token, env.run, env.fp,
                                           domain=env.domain, outcome=outcome)))
        if len(self.commits) >= self.config.commit_batch:
            self._commit_wake.set()

    async def _committer(self) -> None:
        while not self.releasing:
            try:
                await asyncio.wait_for(self._commit_wake.wait(), timeout=self.config.commit_interval)
            except asyncio.TimeoutError:
                pass
            self._commit_wake.clear()
            if self.commits:
                await self._flush_commits()

    def _speculate(self, state: LeaseState) -> None:
        """Start fetching the child that READY would hand out next before it is even in Redis.

        READY is LIFO, so that child is the last one of the highest priority: for a pagination chain,
        page N+1. Queueing it and leasing it back cost a Redis round trip that a busy event loop
        stretches to ~6 ms, a third of a chain step (measured). Instead it goes to the front of the
        buffer at once, and the call that queues the children claims it for this worker (COMMIT's
        claim: READY -> IN-FLIGHT under a lease of ours). Until the claim is confirmed nothing of the
        fetch is settled (ClassifyMiddleware waits for it); if the child was not queued (SEEN: another
        delivery queued it) or not claimable (held or breaker domain), the fetch is dropped unseen."""
        if self.stopping or self.fatal or self.releasing or self.held() >= self.prefetch + 4 * self.concurrency:
            return
        kids = state.discovered
        k = max(range(len(kids)), key=lambda i: (kids[i].priority, i))
        until = self._nospec.get(kids[k].domain)
        if until is not None:
            if until > time.monotonic():
                return  # the domain is held or behind a breaker: Redis decides when it is fetched
            del self._nospec[kids[k].domain]
        cid = state.discovered_ids[k]
        local = self._local.pop(cid, None)
        spec = LeaseState(lease=Lease(cid, b"", 1, ""), env=kids[k], local=local[1] if local else None,
                          claim=asyncio.get_running_loop().create_future())
        state.spec, state.spec_index = spec, k + 1
        self.buffer.appendleft(spec)
        self.stats.inc_value("fleet/speculative")
        self.engine_kick()

    def _claim_answered(self, spec: LeaseState, token: str, deliveries: int) -> None:
        fut = spec.claim
        if fut is None or fut.done():
            return
        if not token:
            if deliveries < 0:  # queued but held, behind a breaker or DONE: stop guessing for a while
                self._nospec[spec.env.domain] = time.monotonic() + NOSPEC_SECONDS
            self._void(spec)
            return
        spec.lease.token, spec.lease.deliveries = token, deliveries
        spec.claim = None
        fut.set_result(True)
        if self.active.get(spec.id) is not spec and all(b is not spec for b in self.buffer):
            # handed back while unconfirmed (shutdown): release the lease we now hold
            self._spawn(self._release_buffered([(spec.id, token)]))

    def _void(self, spec: LeaseState) -> None:
        """The speculative lease was not granted: forget it; a fetch in progress is dropped."""
        if spec.claim is not None and not spec.claim.done():
            spec.claim.set_result(False)
        spec.settled = True
        self.stats.inc_value("fleet/speculative_void")
        self.log.info("speculative_dropped", run=spec.env.run, fp=spec.env.fp)
        if self.active.get(spec.id) is spec:
            del self.active[spec.id]
            if spec.request is not None:
                # the fetch itself is marked (not its lease id, which a later lease may reuse): its
                # response or error is dropped when it comes back (drop_void), and the spider's
                # errback never hears of a fetch that was never its request's delivery
                spec.request.meta[VOID_KEY] = True
                spec.request.errback = None
            if spec.proxy_id and self.proxies:
                self.proxies.finished(spec.proxy_id)
        else:
            with contextlib.suppress(ValueError):
                self.buffer.remove(spec)

    @staticmethod
    def drop_void(request: Request) -> bool:
        """True for the response of a speculative fetch whose lease was not granted (drop it)."""
        return bool(request.meta.get(VOID_KEY))

    async def _confirmed(self, state: LeaseState) -> bool:
        """Wait until Redis confirmed a speculative lease; False: it is not ours, settle nothing."""
        fut = state.claim
        return True if fut is None else await fut

    async def _queue_children(self, state: LeaseState) -> None:
        env = state.env
        spec = state.spec
        commit = Commit(state.id, state.lease.token, env.run, env.fp, state.discovered, done=False,
                        claim=state.spec_index if spec is not None else 0, ids=state.discovered_ids)
        try:
            await self._commit_batch([(state, commit)])
        finally:
            if spec is not None and spec.claim is not None and not spec.claim.done():
                self._void(spec)  # no answer from Redis (fatal outage, shutdown)

    async def _flush_commits(self) -> None:
        batch, self.commits = self.commits[: self.config.commit_batch], self.commits[self.config.commit_batch :]
        await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[tuple[LeaseState, Commit]]) -> None:
        assert self.queue is not None
        nonce = secrets.token_hex(4)  # the same on a retry: a claim whose reply was lost is recognised
        retried = False
        while True:
            try:
                if self.crash_at == "after_done" and any(c.done for _, c in batch):
                    await self.queue.commit([c for _, c in batch], ack=False)
                    os.kill(os.getpid(), signal.SIGKILL)
                enq, events, acked, claims = await self.queue.commit_claiming(
                    [c for _, c in batch], worker=self.worker_id, lease_seconds=self.config.lease_seconds,
                    nonce=nonce)
                self._redis_ok()
                break
            except REDIS_ERRORS as exc:
                await self._redis_trouble(exc)
                retried = True
                if self.fatal:
                    # leave them: the leases expire and another worker redoes them idempotently
                    for st, _ in batch:
                        self.active.pop(st.id, None)
                    return
        woke = False
        for (st, c), n, ok, (ctoken, cdlv) in zip(batch, enq, acked, claims, strict=True):
            if c.claim and st.spec is not None:
                self._claim_answered(st.spec, ctoken, cdlv)
                # the parent no longer needs its claimed child: without this, page N's state held page
                # N+1's, which held N+2's... and a pagination chain kept every list page's state (and
                # its 20-odd discovered envelopes) alive as long as the chain's first page was
                st.spec = None
            # new work in READY for our feeder: children beyond the one this call leased to us; after a
            # retry the count is 0 (the first, lost, call queued them), so any children count
            if n > (1 if ctoken else 0) or (retried and c.discovered):
                woke = True
            if n:
                self.stats.inc_value("fleet/enqueued", n)
            if not c.done:
                st.enqueued = n
                st.children_pending = False
                if st.written and not self.releasing:
                    self._written(st)  # its objects were durable first: DONE + ack can go now
                continue
            if self.active.get(st.id) is st:
                self.active.pop(st.id, None)
            if ok:
                self.stats.inc_value("fleet/acked")
                self.log.info(
                    "request_acked", run=c.run, fp=c.fp, attempt=st.lease.deliveries,
                    items=len(st.items), discovered=len(st.discovered), enqueued=st.enqueued,
                )
            else:
                # the lease moved on (expired and re-leased); DONE is recorded, so the redelivery
                # is acknowledged without a fetch
                self.stats.inc_value("fleet/ack_lost")
                self.log.warning("ack_lost", run=c.run, fp=c.fp, lease=c.lease_id, attempt=st.lease.deliveries)
        if woke or any(event == "closed" for _, event in events):  # a closed breaker's parked work is back
            self._news()
        for domain, event in events:
            self._breaker_event(domain, event, {})
        if self.commits:
            self._commit_wake.set()
        self.engine_kick()

    async def _settle_failure(self, state: LeaseState, verdict: Verdict, response: Response | None) -> None:
        assert self.queue is not None
        if not await self._confirmed(state):
            return
        env = state.env
        cls = verdict.cls
        env.attempts[cls] = env.attempts.get(cls, 0) + 1
        env.history.append(
            {"cls": cls, "reason": verdict.reason, "at": _now_iso(), "worker": self.worker_id}
        )
        env.history = env.history[-20:]
        env.history[-1]["proxy"] = state.proxy_id
        if verdict.detail:
            env.history[-1]["detail"] = verdict.detail[:300]
        detail = f"{verdict.reason}: {verdict.detail}" if verdict.detail else verdict.reason
        status = verdict.status
        if cls == B and status != 429 and state.proxy_id and self.proxies:
            # the proxy is bad for this domain whatever happens to the request
            until = await self._redis_retry(
                lambda: self.proxies.ban(state.proxy_id, env.domain)  # type: ignore[arg-type]
            )
            self.stats.inc_value("fleet/proxy/banned")
            self.log.info("proxy_banned", proxy=state.proxy_id, domain=env.domain,
                          cooling_until=round(until or 0.0, 3))
        if cls == A and env.attempts[A] > self.config.retry_max:
            await self._dead(state, f"exhausted:{A}", detail, response=response)
            return
        if cls == B and env.attempts[B] > self.config.rotate_max:
            await self._dead(state, f"exhausted:{B}", detail, response=response)
            return
        if cls == D:
            await self._dead(state, verdict.reason, detail, response=response)
            return
        now = time.time()
        hold_until = 0.0
        if status in DOMAIN_SLOWDOWN_STATUS and env.domain:
            # the domain says "slow down": back off the whole domain, fleet-wide, one step per burst
            hold_until = await self._redis_retry(
                lambda: self.queue.hold(  # type: ignore[union-attr]
                    env.domain, base=self.config.retry_base, cap=self.config.retry_cap,
                    rnd=random.random(), min_wait=verdict.retry_after or 0.0,
                )
            ) or 0.0
            if hold_until:
                self._nospec[env.domain] = time.monotonic() + max(0.0, float(hold_until) - now)
        if cls == A:
            delay = retry_delay(
                env.attempts[A] - 1, base=self.config.retry_base, cap=self.config.retry_cap,
                retry_after=verdict.retry_after,
            )
        elif status == 429:
            delay = verdict.retry_after or 0.0  # a 429 slows the domain; it does not burn the proxy
        elif state.proxy_id and self.proxies:
            delay = 0.0  # at once, through another proxy (banned above)
        else:
            # no proxy to rotate: wait a little before trying the same route again
            delay = retry_delay(env.attempts[B] - 1, base=self.config.retry_base,
                                cap=self.config.retry_cap, retry_after=verdict.retry_after)
        delay = max(delay, hold_until - now)
        due = time.time() + delay
        await self._redis_retry(lambda: self.queue.nack(state.id, state.lease.token, env, due))  # type: ignore[union-attr]
        self._forget(state)
        self.stats.inc_value("fleet/retried")
        self.log.info(
            "request_delayed", run=env.run, fp=env.fp, cls=cls, reason=verdict.reason,
            delay_s=round(delay, 3), due=due, attempts=env.attempts,
        )

    async def _drift(self, state: LeaseState, reason: str, missing: tuple[str, ...] | list[str]) -> None:
        """Class C: keep the evidence, feed the domain's breaker, and park the request (no DONE)."""
        assert self.queue is not None
        if not await self._confirmed(state):
            return
        env = state.env
        self.stats.inc_value(f"fleet/class/{C}")
        self.log.info("request_classified", run=env.run, fp=env.fp, cls=C, reason=reason,
                      missing=list(missing), attempt=state.lease.deliveries)
        raw_key = evidence_key = None
        try:
            if state.body:
                raw_key = await self._in_pool(self.writer.write_raw, env.spider, env.run, env.fp, state.body)
            evidence = {
                "class": C, "reason": reason, "missing": list(missing), "url": env.url, "fp": env.fp,
                "run": env.run, "spider": env.spider, "callback": env.callback or "parse",
                "cb_kwargs": env.cb_kwargs, "status": state.status, "raw_key": raw_key,
                "worker": self.worker_id, "at": _now_iso(),
                "items_sample": [item_to_dict(i) for i in state.items[:3]],
            }
            evidence_key = await self._in_pool(self.writer.write_evidence, env.spider, env.run, C, env.fp, evidence)
        except Exception as exc:
            self.log.warning("evidence_write_failed", error=type(exc).__name__, cls=C)
        sample = {"url": env.url, "missing": list(missing), "reason": reason, "evidence_key": evidence_key,
                  "raw_key": raw_key, "run": env.run}
        res = await self._redis_retry(
            lambda: self.queue.drift(state.id, state.lease.token, env.domain, sample)  # type: ignore[union-attr]
        )
        self._forget(state)
        self.stats.inc_value("fleet/parked")
        self.log.info("request_parked", run=env.run, fp=env.fp, domain=env.domain, reason=reason)
        if res:
            event, window = res
            self._breaker_event(env.domain, event, {"window": window, "sample": sample})

    def _breaker_event(self, domain: str, event: str, extra: dict[str, Any]) -> None:
        if event not in {"opened", "reopened", "closed"}:
            return
        spider = self.spider.name if self.spider else "?"
        window = str(extra.get("window", ""))
        rate = round(window.count("C") / len(window), 3) if window else None
        if event == "closed":
            self._nospec.pop(domain, None)
            self.stats.inc_value("fleet/breaker/closed")
            self.log.warning("breaker_closed", domain=domain)
            self.alerter.send({
                "text": f":white_check_mark: Fleet breaker closed for {spider} on {domain}; parked requests released.",
                "event": "breaker_closed", "spider": spider, "domain": domain,
            })
            return
        self._nospec[domain] = time.monotonic() + NOSPEC_SECONDS
        self.stats.inc_value("fleet/breaker/opened")
        self._spawn(self._alert_opened(spider, domain, event, rate, len(window)))

    async def _alert_opened(self, spider: str, domain: str, event: str, rate: float | None, window: int) -> None:
        assert self.queue is not None
        info = (await self.queue.breakers()).get(domain, {})
        samples = info.get("samples", [])
        urls = [s_.get("url") for s_ in samples]
        missing = sorted({f for s_ in samples for f in s_.get("missing", [])})
        evidence = [s_.get("evidence_key") for s_ in samples if s_.get("evidence_key")]
        replay = f"fleet replay {spider} --url {urls[-1]}" if urls else f"fleet replay {spider} --key <raw key>"
        reset = f"fleet breakers reset {spider} {domain}"
        resume = f"fleet run {spider} --resume <RUN>"
        self.log.warning(
            "breaker_opened", domain=domain, reopened=event == "reopened", rate=rate, window=window,
            sample_urls=urls, missing_fields=missing, evidence_keys=evidence,
            open_until=info.get("open_until"),
        )
        self.alerter.send({
            "text": (f":rotating_light: Fleet drift breaker {'re-' if event == 'reopened' else ''}opened for "
                     f"spider {spider} on {domain}: C rate {rate} over the last {window} item pages; "
                     f"missing fields: {', '.join(missing) or 'all items'}. "
                     f"Requests are parked, not lost. Check a fix with `{replay}`, then `{reset}`; "
                     f"where no worker is running (cron), finish the run with `{resume}`."),
            "event": "breaker_opened", "spider": spider, "domain": domain, "reopened": event == "reopened",
            "rate": rate, "window": window, "sample_urls": urls, "missing_fields": missing,
            "evidence_keys": evidence, "replay_command": replay, "reset_command": reset, "resume_command": resume,
            "open_until": info.get("open_until"),
        })

    async def _redis_retry(self, op: Callable[[], Any]) -> Any:
        while True:
            try:
                res = await op()
                self._redis_ok()
                return res
            except REDIS_ERRORS as exc:
                await self._redis_trouble(exc)
                if self.fatal:
                    return None

    async def _dead(
        self, state: LeaseState, reason: str, detail: str, *, response: Response | None = None,
        raw: bytes | None = None,
    ) -> None:
        assert self.queue is not None
        if not await self._confirmed(state):
            return
        env = state.env
        fields: dict[str, str] = {
            "class": D,
            "reason": reason,
            "detail": detail[:500],
            "url": env.url,
            "run": env.run,
            "fp": env.fp,
            "attempts": json.dumps(env.attempts),
            "proxies": json.dumps(sorted({h["proxy"] for h in env.history if h.get("proxy")})),
            "worker": self.worker_id,
            "at": _now_iso(),
        }
        if response is not None:
            fields["status"] = str(response.status)
            fields["headers"] = json.dumps(
                {h: (response.headers.get(h) or b"").decode("latin-1") for h in _EVIDENCE_HEADERS
                 if response.headers.get(h)}
            )
            fields["body_sha256"] = hashlib.sha256(response.body).hexdigest()
            fields["body_size"] = str(len(response.body))
        if raw is not None:
            fields["raw"] = raw[:4096].decode("utf-8", "replace")
        else:
            fields["envelope"] = env.dumps() if env.url else ""
        if env.url and env.fp:
            cls = reason.partition(":")[2] if reason.startswith("exhausted:") else D  # exhausted:A -> A
            try:
                evidence = {k: v for k, v in fields.items() if k != "envelope"}
                key = await self._in_pool(self.writer.write_evidence, env.spider, env.run, "D", env.fp, evidence)
                fields["evidence_key"] = key
            except Exception as exc:  # evidence is best effort; the DLQ entry is the record
                self.log.warning("evidence_write_failed", error=type(exc).__name__, cls=cls)
        await self._redis_retry(
            lambda: self.queue.dead(state.id, state.lease.token, fields, maxlen=self.config.dlq_maxlen)  # type: ignore[union-attr]
        )
        self._forget(state)
        self.stats.inc_value("fleet/dlq")
        self.log.warning("request_dead", run=env.run, fp=env.fp, reason=reason, url=env.url)

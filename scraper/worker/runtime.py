"""The worker runtime: a thin facade that wires the worker's components and settles each request once.

Scrapy has no notion of "this request is finished" (every item passed the pipelines, every child
request known). The runtime keeps a ledger per leased request (scraper.worker.ledger) and settles it exactly once:

* ok     → objects durable (scraper.worker.sinks) → children queued, then DONE + ack (scraper.worker.committer)
* A / B  → nack to DELAYED (scraper.policy.decide decides, scraper.worker.failures applies; no sleeping in the worker)
* C      → parked with evidence; the domain's drift breaker fed (scraper.worker.breakers)
* D      → DLQ with evidence
* release (shutdown) → back to READY at once

What the middlewares report, and the moment a request is settled, is scraper.worker.reports; the other
components: scraper.worker.feeder (LEASE loop, wake channel, speculation), scraper.worker.keeper (heartbeat,
maintain, idle exit), scraper.worker.health (Redis and store outages), scraper.worker.gating (the politeness
gate, made when first needed). What the scheduler, middlewares and download handlers call is FleetPort
(scraper.worker.ports): this class's public methods and the Reports methods it binds; nothing else of this
class is theirs to call.
Redis is called through ``redis.asyncio`` on the reactor's own loop, the object store in a bounded
thread pool or the writer process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis.asyncio as aioredis
from scrapy import Request, Spider
from scrapy.crawler import Crawler

from scraper.infra import log
from scraper.infra.config import FleetConfig
from scraper.policy.politeness import Politeness
from scraper.queue import redisio
from scraper.queue.client import FleetQueue
from scraper.queue.shards import ShardedQueue, open_queue
from scraper.queue.storebind import recorder
from scraper.store import health as storehealth
from scraper.store.backends import open_store, store_identity
from scraper.store.objects import ObjectWriter
from scraper.worker import crashpoints
from scraper.worker.adapter import Offsite, kick_engine, unspace_slot
from scraper.worker.alerts import Alerter
from scraper.worker.breakers import Breakers
from scraper.worker.cancels import Cancels
from scraper.worker.committer import Committer, Flags
from scraper.worker.discovery import Discovery
from scraper.worker.failures import FailureApplier, spider_retry_times
from scraper.worker.feeder import Feeder, Speculation
from scraper.worker.finisher import Finisher
from scraper.worker.gate import Gate
from scraper.worker.gating import Gating
from scraper.worker.health import REDIS_ERRORS, Health
from scraper.worker.keeper import Keeper
from scraper.worker.ledger import LeaseState, Ledger, confirmed_leases
from scraper.worker.proxies import ProxyPool, parse_proxies
from scraper.worker.queueport import QueuePort
from scraper.worker.redirects import Redirects
from scraper.worker.reports import Reports
from scraper.worker.sinks import STORE_THREADS, Durability, open_sink
from scraper.worker.tuning import tune_gc

__all__ = ["FleetRuntime"]



async def _open_queue(health: Health, client: Any, spider: str, config: FleetConfig) -> FleetQueue:
    """The spider's queue, a Redis blip while the worker starts ridden out as one later on (FLEET_REDIS_OUTAGE_MAX)
    rather than a failed start (exit 1, "configuration"); past the limit ``health.fatal`` is set: exit 3
    (scraper.cli.worker)."""
    opened = await health.redis_retry(lambda: open_queue(client, spider, shards=config.queue_shards,
                                                         dedup_ttl=config.dedup_ttl, breaker=config.breaker_params()))
    if opened is None:
        raise RuntimeError(health.fatal or "Redis unreachable")
    return opened

class FleetRuntime:
    """One per crawler (``crawler.fleet``); created by the scheduler."""

    def __init__(self, crawler: Crawler, config: FleetConfig, redis_url: str) -> None:
        self.crawler = crawler
        self.config = config
        self.redis_url = redis_url
        self.stats = crawler.stats
        self.worker_id = config.worker_id
        self.concurrency = int(crawler.settings.getint("CONCURRENT_REQUESTS"))
        # a small local buffer: deep buffers delay newly discovered (LIFO-first) work behind old leases
        self.prefetch = config.prefetch if config.prefetch is not None else max(4, self.concurrency // 4)
        until_idle: float | None = crawler.settings.getfloat("FLEET_UNTIL_IDLE", -1.0)
        self.until_idle = None if until_idle is None or until_idle < 0 else until_idle
        self.crash_at = os.environ.get("FLEET_TEST_CRASH_AT", "")  # fleet smoke (scraper.worker.crashpoints)
        self.spider: Spider | None = None
        self.queue: QueuePort | None = None
        self.proxies: ProxyPool = ProxyPool([])
        self.client: aioredis.Redis | None = None
        self.log = log.get_logger(worker=self.worker_id)
        self.closed = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight: set[asyncio.Task[Any]] = set()

        self.flags = Flags()
        self.ledger = Ledger()
        self.buffer: deque[LeaseState] = self.ledger.buffer
        self.active: dict[str, LeaseState] = self.ledger.active
        self.health = Health(config, self.log, self.stats, self.request_stop)
        self.writer = ObjectWriter(open_store(config.store))
        self.pool = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="fleet-store")
        self.alerter = Alerter(config.alert_webhook)
        self.breakers = Breakers(self.alerter, self.stats, self.log, self.spawn)
        self.speculation = Speculation(self.ledger, self.breakers, self.stats, self.log, self.engine_kick,
                                       lambda leases: self.spawn(self.keeper.release(leases)),
                                       self._proxy_done)
        self.committer = Committer(config, self.worker_id, self.ledger, self.health, self.flags, self.breakers,
                                   self.stats, self.log, self._news, self.engine_kick,
                                   lambda st: self.finisher.outcome(st))
        self.committer.claim_answered = self.speculation.answered
        # fleet cancel: a lease of a cancelled run is acknowledged instead of settled (scraper.worker.cancels)
        self.cancels = Cancels(self.ledger, self.health, self.flags, confirmed=self.speculation.confirmed,
                               spawn=self.spawn, stats=self.stats, log=self.log)
        self.failures = FailureApplier(config, self.worker_id, self.ledger, self.health, self.breakers,
                                       self.writer, self._in_pool, self.cancels.confirmed, self.stats, self.log,
                                       retry_times=spider_retry_times(crawler.settings))
        self.feeder = Feeder(self.ledger, self.health, self.flags, worker_id=self.worker_id,
                             lease_seconds=config.lease_seconds, prefetch=self.prefetch,
                             concurrency=self.concurrency, stats=self.stats, log=self.log, kick=self.engine_kick,
                             beat=self._beat, reaped=self._reaped, probe_store=lambda: self.finisher.probe_store(),
                             dead=lambda st, reason, detail, raw: self.spawn(
                                 self.failures.dead(st, reason, detail, raw=raw)),
                             max_lost=config.max_lost_deliveries)
        self.finisher = Finisher(config, self.ledger, self.health, self.flags, self.committer, self.failures,
                                 self.speculation, spider=lambda: self.spider, cap=self.feeder.cap, probe=self._probe,
                                 spawn=self.spawn, stats=self.stats, log=self.log, worker_id=self.worker_id)
        self.sink = open_sink(self.writer, self.pool, self.finisher.ctx, config.commit_batch)
        self.durability = Durability(self.sink, self.spawn, self.finisher.objects_answered)
        self.finisher.durability = self.durability
        self.finisher.dropped = self.cancels.dropped
        self.discovery = Discovery(config, self.ledger, self.stats, self.log)
        self.keeper = Keeper(self.ledger, self.health, self.flags, self.feeder, lease_seconds=config.lease_seconds,
                             until_idle=self.until_idle, stats=self.stats, log=self.log, kick=self.engine_kick,
                             committing=lambda: bool(self.committer.commits))
        self.keeper.tally = self.finisher.tally
        self.gating = Gating(
            Politeness.from_settings(crawler.settings, getattr(crawler.spidercls, "domain_settings", {})),
            self.ledger, feeder=self.feeder, keeper=self.keeper, cancels=self.cancels, speculation=self.speculation,
            worker_id=self.worker_id, lease_seconds=config.lease_seconds, stats=self.stats, log=self.log,
            kick=self.engine_kick, defer=lambda state, until, reason: self.reports.defer(state, until, reason),
            unspace=lambda request: unspace_slot(self.crawler, request))
        self.reports = reports = Reports(self.ledger, self.flags, self.gating, finisher=self.finisher,
                                         failures=self.failures, committer=self.committer, discovery=self.discovery,
                                         spawn=self.spawn, stats=self.stats, log=self.log, stop=self.request_stop)
        # FleetPort's per-request reports are the Reports' own methods (scraper.worker.reports)
        self.fetched, self.fail = reports.fetched, reports.fail
        self.defer, self.ignored = reports.defer, reports.ignored
        self.callback_failed = reports.callback_failed
        self.item_started, self.item_passed = reports.item_started, reports.item_passed
        self.item_dropped, self.item_failed = reports.item_dropped, reports.item_failed
        self.output_done, self.discovered = reports.output_done, self.discovery.found
        self.redirects = Redirects(self.ledger, self.discovery, ignored=reports.ignored, spawn=self.spawn,
                                   kick=self.engine_kick, stats=self.stats, log=self.log)
        self.continued = self.redirects.continued  # a redirect: Scrapy's offsite and dupefilter checks
        self.crawl_delay = self.gating.crawl_delay

    # -- state others read ------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.flags.stopping

    @property
    def releasing(self) -> bool:
        return self.flags.releasing

    @releasing.setter
    def releasing(self, value: bool) -> None:  # the CLI's forced shutdown
        self.flags.releasing = value

    @property
    def fatal(self) -> str | None:
        return self.health.fatal

    @property
    def exit_code(self) -> int:
        return self.health.exit_code

    def config_fatal(self, reason: str, event: str) -> None:
        self.health.config_fatal(reason, event)

    @property
    def idle_since(self) -> float | None:
        return self.feeder.idle_since

    @property
    def gate(self) -> Gate | None:
        return self.gating.gate

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self, spider: Spider) -> None:
        self.spider = spider
        self.client = client = redisio.client(
            self.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        fleet_queue = await _open_queue(self.health, client, spider.name, self.config)
        if isinstance(fleet_queue, ShardedQueue):  # a shard's failure while the others answer: logged, once
            fleet_queue.on_shard_error = self._shard_unavailable
        queue, self.sink = crashpoints.install(self.crash_at, fleet_queue, self.sink)
        self.durability.sink = self.sink
        self.queue = self.committer.queue = self.failures.queue = self.feeder.queue = self.keeper.queue = queue
        self.cancels.queue = self.redirects.queue = queue
        self.proxies = self.failures.proxies = self.keeper.proxies = self.reports.proxies = ProxyPool(
            parse_proxies(self.config.proxies), self.client)
        self.breakers.spider = spider.name
        self.finisher.tally.bind(self.client, fleet_queue.keys.tally, self.config.dedup_ttl)
        self.breakers.breakers = fleet_queue.breakers
        self.committer.record = recorder(client, spider.name, store_identity(self.config.store))
        self.feeder.spider = spider.name
        self.log = self.log.bind(spider=spider.name)
        for part in (self.health, self.breakers, self.speculation, self.committer, self.failures, self.feeder,
                     self.keeper, self.finisher, self.discovery, self.cancels, self.reports,
                     self.redirects):
            part.log = self.log
        self.gating.bind(queue, self.log)
        self.discovery.spider = spider
        self.discovery.offsite = Offsite.for_spider(self.crawler, spider)
        await self.health.redis_retry(lambda: client.sadd("fleet:spiders", spider.name))
        await self.sink.start()
        tune_gc()
        self._tasks = [
            asyncio.ensure_future(self.feeder.run()),
            asyncio.ensure_future(self.committer.run()),
            asyncio.ensure_future(self.keeper.run()),
            asyncio.ensure_future(self.feeder.listen(self.client, fleet_queue.wake_channels(self.worker_id))),
            asyncio.ensure_future(self.cancels.run(self.client, fleet_queue.keys)),
        ]
        self.log.info("worker_started", concurrency=self.concurrency, prefetch=self.prefetch)

    async def close(self, reason: str) -> None:
        flags = self.flags
        flags.stopping = True
        if flags.grace_deadline is None:
            flags.grace_deadline = time.monotonic() + self.config.shutdown_grace
        # settled requests finish their writes and commits within what is left of the grace period
        while (self._inflight or self.committer.commits or self.durability.to_write) \
                and time.monotonic() < flags.grace_deadline:
            self.committer.wake.set()
            await asyncio.sleep(0.02)
        flags.releasing = True  # the loops end on this flag: asyncio.wait_for can swallow a cancel (3.11)
        self._news()
        self.committer.wake.set()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.committer.commits:
            await self.committer.flush()
        await self.keeper.release_all(reason)
        await self._unwait()
        await self.gating.close()
        await self.finisher.tally.close(self.log)
        await self.sink.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            await self.client.aclose()
        self.alerter.close()
        self.closed = True
        self.log.info("worker_stopped", reason=reason, exit_code=self.exit_code)

    def _shard_unavailable(self, shard: int, exc: BaseException) -> None:
        self.stats.inc_value("fleet/shard_unavailable")
        self.log.warning("shard_unavailable", shard=shard, error=type(exc).__name__, detail=str(exc)[:200])

    async def _unwait(self) -> None:
        """Off the queue's WAITING list: a stopped worker does not hold up a change of FLEET_QUEUE_SHARDS."""
        if self.queue is None:
            return
        try:
            await self.queue.unwait(self.worker_id)
        except REDIS_ERRORS as exc:  # listed 2-3 s at most anyway
            self.log.warning("unwait_failed", error=type(exc).__name__)

    async def release_now(self, reason: str) -> None:
        """Hand every lease back at once (the last step before a forced exit: a callback that never
        returns keeps Scrapy's engine, and so :meth:`close`, from ever finishing)."""
        self.releasing = True
        await self.keeper.release_all(reason)
        await self.finisher.tally.close(self.log)  # the run's objects and items, for its summary and manifest
        log.flush()

    def proxy_chosen(self, state: LeaseState, proxy_id: str) -> None:
        """The proxy middleware routed this request through ``proxy_id`` (its outcome is that proxy's)."""
        state.proxy_id = proxy_id

    def engine_kick(self) -> None:
        kick_engine(self.crawler)

    def request_stop(self, reason: str = "signal") -> None:
        """Stop leasing and hand back the local buffer at once; in-flight requests get the grace
        period (FLEET_SHUTDOWN_GRACE) to finish, after which :meth:`close` releases the rest."""
        if self.flags.stopping:
            return
        self.flags.stopping = True
        self.flags.grace_deadline = time.monotonic() + self.config.shutdown_grace
        self.log.info("shutdown_requested", reason=reason, inflight=len(self.active),
                      buffered=len(self.buffer), grace_s=self.config.shutdown_grace)
        buffered = confirmed_leases([*self.buffer, *self.gating.clear()])
        self.buffer.clear()
        if buffered and self.queue is not None:
            self.spawn(self.keeper.release(buffered))
        self._news()
        self.engine_kick()

    def may_close(self) -> bool:
        """Answer to Scrapy's spider_idle: close only on shutdown or a long-enough empty queue."""
        if self.health.fatal:
            return True
        if self.held() or self.committer.commits or self._inflight or self.durability.to_write:
            return False
        if self.flags.stopping:
            return True
        if self.until_idle is not None:
            idle = self.keeper.idle_for()
            return idle is not None and idle >= self.until_idle
        return False

    # -- wiring helpers ---------------------------------------------------------------------------

    def _news(self) -> None:
        self.feeder.news()

    async def _beat(self) -> None:
        await self.keeper.beat()

    def _reaped(self, reaped: list[tuple[str, str]]) -> None:
        self.keeper.reaped(reaped)

    def _proxy_done(self, proxy_id: str) -> None:
        if self.proxies:
            self.proxies.finished(proxy_id)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a settlement task: counted (close and may_close wait for it), its error logged."""
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("settle_error", error=repr(task.exception()))
        self.engine_kick()

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _probe(self) -> None:
        await self._in_pool(self.writer.store.put, storehealth.probe_key(self.worker_id), b"ok")

    # -- the buffer -------------------------------------------------------------------------------

    def held(self) -> int:
        return self.ledger.held()

    def next_state(self) -> LeaseState | None:
        return self.feeder.next_state(self.spider)

    def state_for(self, request: Request) -> LeaseState | None:
        return self.ledger.state_for(request)

    drop_void = staticmethod(Speculation.drop_void)

    # -- the worker metrics -------------------------------------------------------------------------

    def time_commits(self, observe: Callable[[float], None] | None) -> None:
        """Hand the seconds of every COMMIT call to ``observe`` (the worker metrics' histogram)."""
        self.committer.timed = observe

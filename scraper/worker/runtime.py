"""The worker runtime: a thin facade that wires the worker's components and settles each request once.

Scrapy has no notion of "this request is finished" (every item passed the pipelines, every child
request known). The runtime keeps a ledger per leased request (scraper.worker.ledger) and settles it exactly once:

* ok     → objects durable (scraper.worker.sinks) → children queued, then DONE + ack (scraper.worker.committer)
* A / B  → nack to DELAYED (scraper.policy.decide decides, scraper.worker.failures applies; no sleeping in the worker)
* C      → parked with evidence; the domain's drift breaker fed (scraper.worker.breakers)
* D      → DLQ with evidence
* release (shutdown) → back to READY at once

The other components: scraper.worker.feeder (LEASE loop, wake channel, speculation), scraper.worker.keeper (heartbeat,
maintain, idle exit), scraper.worker.health (Redis and store outages). What the scheduler, middlewares and
download handlers call is the public methods below; nothing else of this class is theirs to call.
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
from scrapy.http import Response
from scrapy.utils.httpobj import urlparse_cached

from scraper.infra import log
from scraper.infra.config import FleetConfig
from scraper.policy.politeness import Politeness
from scraper.policy.taxonomy import B, Verdict
from scraper.queue import redisio
from scraper.queue.client import FleetQueue
from scraper.store import health as storehealth
from scraper.store.backends import open_store
from scraper.store.objects import ObjectWriter
from scraper.worker import crashpoints
from scraper.worker.adapter import Offsite, kick_engine, unspace_slot
from scraper.worker.alerts import Alerter
from scraper.worker.breakers import Breakers
from scraper.worker.cancels import Cancels
from scraper.worker.committer import Committer, Flags
from scraper.worker.discovery import Discovery
from scraper.worker.failures import FailureApplier, now_iso
from scraper.worker.feeder import Feeder, Speculation
from scraper.worker.finisher import Finisher
from scraper.worker.gate import Gate
from scraper.worker.health import Health
from scraper.worker.keeper import Keeper
from scraper.worker.ledger import LeaseState, Ledger, confirmed_leases
from scraper.worker.proxies import ProxyPool, parse_proxies
from scraper.worker.queueport import QueuePort
from scraper.worker.redirects import Follow, Redirects
from scraper.worker.sinks import STORE_THREADS, Durability, open_sink
from scraper.worker.tuning import tune_gc

__all__ = ["FleetRuntime"]


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
                                       self.writer, self._in_pool, self.cancels.confirmed, self.stats, self.log)
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
        self.redirects = Redirects(self.ledger, self.discovery, ignored=self.ignored, spawn=self.spawn,
                                   kick=self.engine_kick, stats=self.stats, log=self.log)
        self.keeper = Keeper(self.ledger, self.health, self.flags, self.feeder, lease_seconds=config.lease_seconds,
                             until_idle=self.until_idle, stats=self.stats, log=self.log, kick=self.engine_kick,
                             committing=lambda: bool(self.committer.commits))
        self.keeper.tally = self.finisher.tally
        self.politeness = Politeness.from_settings(crawler.settings, getattr(crawler.spidercls, "domain_settings", {}))
        self.gate: Gate | None = None  # only for a spider with a politeness setting (or a robots.txt Crawl-delay)
        if self.politeness.active:
            self._make_gate()

    def _make_gate(self) -> Gate:
        gate = self.gate = self.feeder.gate = self.keeper.gate = self.cancels.gate = Gate(
            self.politeness, self.ledger, worker_id=self.worker_id, lease_seconds=self.config.lease_seconds,
            stats=self.stats, log=self.log, kick=self.engine_kick, defer=self.defer,
            unspace=lambda request: unspace_slot(self.crawler, request))
        self.speculation.gated = gate.gated
        gate.queue = self.queue
        return gate

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

    @property
    def idle_since(self) -> float | None:
        return self.feeder.idle_since

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self, spider: Spider) -> None:
        self.spider = spider
        self.client = redisio.client(
            self.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        fleet_queue = FleetQueue(self.client, spider.name, dedup_ttl=self.config.dedup_ttl,
                                 breaker=self.config.breaker_params())
        queue, self.sink = crashpoints.install(self.crash_at, fleet_queue, self.sink)
        self.durability.sink = self.sink
        self.queue = self.committer.queue = self.failures.queue = self.feeder.queue = self.keeper.queue = queue
        self.cancels.queue = self.redirects.queue = queue
        self.proxies = self.failures.proxies = self.keeper.proxies = ProxyPool(
            parse_proxies(self.config.proxies), self.client)
        self.breakers.spider = spider.name
        self.finisher.tally.bind(self.client, fleet_queue.keys.tally, self.config.dedup_ttl)
        self.breakers.breakers = fleet_queue.breakers
        self.feeder.spider = spider.name
        self.log = self.log.bind(spider=spider.name)
        for part in (self.health, self.breakers, self.speculation, self.committer, self.failures, self.feeder,
                     self.keeper, self.finisher, self.discovery, self.cancels, self.redirects):
            part.log = self.log
        if self.gate is not None:
            self.gate.log, self.gate.queue = self.log, queue
        self.discovery.spider = spider
        self.discovery.offsite = Offsite.for_spider(self.crawler, spider)
        await self.client.sadd("fleet:spiders", spider.name)
        await self.sink.start()
        tune_gc()
        self._tasks = [
            asyncio.ensure_future(self.feeder.run()),
            asyncio.ensure_future(self.committer.run()),
            asyncio.ensure_future(self.keeper.run()),
            asyncio.ensure_future(self.feeder.listen(self.client, fleet_queue.keys.wake_channel(self.worker_id))),
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
        if self.gate is not None:
            await self.gate.close()
        await self.finisher.tally.close(self.log)
        await self.sink.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            await self.client.aclose()
        self.alerter.close()
        self.closed = True
        self.log.info("worker_stopped", reason=reason, exit_code=self.exit_code)

    async def release_now(self, reason: str) -> None:
        """Hand every lease back at once (the last step before a forced exit: a callback that never
        returns keeps Scrapy's engine, and so :meth:`close`, from ever finishing)."""
        self.releasing = True
        await self.keeper.release_all(reason)
        log.flush()

    def proxy_chosen(self, state: LeaseState, proxy_id: str) -> None:
        """The proxy middleware routed this request through ``proxy_id`` (its outcome is that proxy's)."""
        state.proxy_id = proxy_id

    def crawl_delay(self, request: Request, delay: float) -> bool:
        """robots.txt's Crawl-delay for the request's host: True if the gate spaces it fleet-wide."""
        host = (urlparse_cached(request).hostname or "").lower()
        gate = self.gate if self.gate is not None or self.queue is None else self._make_gate()
        return gate is not None and bool(host) and gate.crawl_delay(host, delay)

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
        buffered = confirmed_leases([*self.buffer, *(self.gate.clear() if self.gate is not None else ())])
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

    # -- what the middlewares report --------------------------------------------------------------

    def fetched(self, state: LeaseState, response: Response, verdict: Verdict) -> None:
        fetch = state.fetch
        fetch.status = response.status
        fetch.fetched_at = now_iso()
        fetch.body = response.body
        if self.gate is not None:
            self.gate.done(state, "bad" if response.status in (429, 503) or verdict.cls == B else "ok")
        elapsed = int((time.monotonic() - fetch.started) * 1000)
        if fetch.proxy_id and self.proxies:
            self.proxies.finished(fetch.proxy_id)
            if verdict.cls != B:
                self.proxies.success(fetch.proxy_id, state.env.domain, float(elapsed))
        self.log.info(
            "request_fetched", run=state.env.run, fp=state.env.fp, status=response.status,
            elapsed_ms=elapsed, attempt=state.lease.deliveries, proxy=fetch.proxy_id,
        )

    def defer(self, state: LeaseState, until: float, reason: str) -> None:
        """Put a request back in DELAYED without using any budget (e.g. every proxy cooling)."""
        if state.settled:
            return
        state.settled = True
        if self.gate is not None:
            self.gate.done(state, "none")
        self.stats.inc_value("fleet/deferred")
        self.log.info("request_deferred", run=state.env.run, fp=state.env.fp, reason=reason,
                      until=round(until, 3))
        self.spawn(self.failures.defer(state, until))

    def item_started(self, state: LeaseState, item: Any) -> None:
        self.ledger.item_out(state, item)

    def item_passed(self, yielded: Any, item: Any) -> None:
        """``yielded`` left the pipelines as ``item`` (the object written: what the user's left)."""
        state = self.ledger.item_back(yielded)
        if state is not None:
            state.out.items.append(item)
            self.maybe_finish(state)

    def item_dropped(self, yielded: Any) -> None:
        state = self.ledger.item_back(yielded)
        if state is not None:
            self.maybe_finish(state)

    def item_failed(self, yielded: Any, exc: BaseException) -> None:
        """A pipeline raised: the request is not finished cleanly, so it is not acknowledged as ok."""
        state = self.ledger.item_back(yielded)
        if state is not None:
            state.out.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self.maybe_finish(state)

    def discovered(self, state: LeaseState, request: Request) -> None:
        self.discovery.found(state, request)

    def continued(self, state: LeaseState, request: Request, follow: Follow) -> bool:
        """A redirect of a leased request: Scrapy's offsite and dupefilter checks (scraper.worker.redirects)."""
        return self.redirects.continued(state, request, follow)

    def output_done(self, state: LeaseState) -> None:
        state.out.exhausted = True
        self.maybe_finish(state)

    def maybe_finish(self, state: LeaseState) -> None:
        if state.settled or not state.finished():
            return
        state.settled = True
        try:
            self.finisher.finish(state)
        except Exception as exc:  # a bug or an item nothing can encode: the lease must still settle
            self.log.error("finish_failed", run=state.env.run, fp=state.env.fp, error=type(exc).__name__)
            self.spawn(self.failures.dead(state, "finish_error", f"{type(exc).__name__}: {exc}"[:300]))

    def callback_failed(self, state: LeaseState, exc: BaseException) -> None:
        if state.settled or self.flags.releasing:
            return
        state.settled = True
        self.finisher.callback_failed(state, exc)

    def time_commits(self, observe: Callable[[float], None] | None) -> None:
        """Hand the seconds of every COMMIT call to ``observe`` (the worker metrics' histogram)."""
        self.committer.timed = observe

    def ignored(self, state: LeaseState, exc: BaseException) -> None:
        """Another component dropped the request (offsite, robots…): nothing to retry; ack it."""
        state.settled = True
        if self.gate is not None:  # robots.txt, offsite: no fetch, no measure
            self.gate.done(state, "none")
        self.stats.inc_value("fleet/ignored")
        self.log.info("request_ignored", run=state.env.run, fp=state.env.fp, reason=str(exc)[:200])
        self.committer.ack_only(state)

    def fail(self, state: LeaseState, verdict: Verdict, response: Response | None) -> None:
        if state.settled or self.flags.releasing:
            return
        state.settled = True
        if self.gate is not None:  # a timeout or a block slows the domain down (AIMD)
            self.gate.done(state, "bad" if verdict.cls == B or "Timeout" in verdict.reason else "none")
        if response is None and state.fetch.proxy_id and self.proxies:
            self.proxies.finished(state.fetch.proxy_id)
        self.stats.inc_value(f"fleet/class/{verdict.cls}")
        self.log.info(
            "request_classified", run=state.env.run, fp=state.env.fp, cls=verdict.cls,
            reason=verdict.reason, attempt=state.lease.deliveries,
            **({"detail": verdict.detail} if verdict.detail else {}),
        )
        self.spawn(self.failures.settle(state, verdict, response))

"""The start-key feeder: a scrapy-redis spider's ``redis_key`` (``<spider>:start_urls``) into Fleet's queue.

Why an extension and not scrapy-redis's own pull: ``RedisMixin.spider_idle`` pops entries with
LRANGE + LTRIM and hands them to the engine: a worker that dies after the pop loses them, and two
workers race on the same key. Under Fleet the spider's idle hook is disconnected and this extension
(added by ``scraper.worker.catalog.worker_settings`` for ``RedisMixin`` spiders only) moves entries
with ``STAGE_STARTS`` into a per-worker staging list (``scraper.queue.startkeys``), turns each into
requests with the spider's own ``make_request_from_data`` (so JSON data works as it did), seeds them
as start requests (``scraper.queue.startfp``: Scrapy's ``dont_filter`` semantics, as ``fleet seed``)
into the run of FLEET_REDIS_RUN and only then deletes the staging list. Existing ``LPUSH``/``SADD``
feeders keep working; an entry that is not a URL or JSON (a pickle) goes to the DLQ unread.

Outside a Fleet worker (plain ``scrapy crawl``) it does nothing: scrapy-redis works as it always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from redis.exceptions import ResponseError
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler

from scraper.infra.embedded import resolve_redis_url
from scraper.policy.urls import refusal
from scraper.queue import redisio
from scraper.queue.client import FleetQueue
from scraper.queue.envelope import Envelope, EnvelopeError
from scraper.queue.seedwire import text
from scraper.queue.shards import open_queue
from scraper.queue.startfp import mark_start
from scraper.queue.startkeys import Staged, StartStage
from scraper.worker.failures import now_iso
from scraper.worker.ports import FleetPort, fleet_of
from scraper.worker.redisspider import StartSource, entry_problem, redis_url_setting

__all__ = ["POLL_SECONDS", "StartFeeder"]

#: How often an idle feeder looks at the start key (scrapy-redis looks on every spider_idle, 5 s).
POLL_SECONDS = 0.5
#: Requests one entry may turn into; the rest are dropped with a warning (hostile data, spider code).
MAX_REQUESTS_PER_ENTRY = 10_000


class StartFeeder:
    """Scrapy extension: one task per worker that keeps READY fed from the spider's start key."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.stop = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> StartFeeder:
        ext = cls(crawler)
        crawler.signals.connect(ext.opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.closed, signal=signals.spider_closed)
        return ext

    def opened(self, spider: Spider) -> None:
        rt = fleet_of(self.crawler)
        if rt is None:
            return
        idle = getattr(spider, "spider_idle", None)
        if idle is not None:  # scrapy-redis's setup_redis connected it: its pull must not run here
            self.crawler.signals.disconnect(idle, signal=signals.spider_idle)
        # the scrapy_redis_settings_replaced notice: scraper.cli.worker, for every spider
        own = redis_url_setting(type(spider), self.crawler.settings)
        if own and own != self.crawler.settings.get("FLEET_REDIS_URL"):
            rt.log.warning("redis_url_ignored", note="FLEET_REDIS_URL is set; the start key is read there")
        source = StartSource.of(spider, self.crawler.settings)
        rt.log.info("start_key_feeding", key=source.key, kind=source.kind, batch=source.batch,
                    run=rt.config.redis_run)
        self.task = asyncio.ensure_future(self.run(rt, spider, source))

    async def closed(self, spider: Spider, reason: str) -> None:
        # a coroutine: a signal handler returning a Deferred is deprecated in Scrapy 2.19 (a WARNING per worker)
        if self.task is None:
            return
        self.stop = True
        self.wake.set()
        await self._join()

    async def _join(self) -> None:
        assert self.task is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.task), 30)

    def misconfigured(self, rt: FleetPort, source: StartSource, why: str) -> None:
        """The start key cannot be read as the spider reads it (its type, its cluster slot). A worker that
        stays (no ``--until-idle``) warns and tries again: an operator may mend the key. One that exits
        when idle would exit 0 with the key's URLs never fetched, which cron reads as a finished crawl, so
        it stops with exit 1 and says why."""
        if self.crawler.settings.getfloat("FLEET_UNTIL_IDLE", -1.0) >= 0:
            rt.config_fatal(f"start key {source.key!r}, read as a {source.kind}: {why[:300]}; fix the key or the "
                            "spider's REDIS_START_URLS_AS_SET / REDIS_START_URLS_AS_ZSET", "start_feed_misconfigured")

    async def run(self, rt: FleetPort, spider: Spider, source: StartSource) -> None:
        cfg = rt.config
        url = self.crawler.settings.get("FLEET_REDIS_URL") or resolve_redis_url()
        client = redisio.client(url, socket_timeout=30, socket_connect_timeout=5)
        queue = await open_queue(client, str(spider.name), shards=cfg.queue_shards, dedup_ttl=cfg.dedup_ttl)
        try:
            stage = StartStage(client, str(spider.name), cfg.worker_id, source.key, source.kind)
        except ValueError as exc:  # a start key outside the spider's cluster slot: nothing can be moved
            rt.log.error("start_feed_failed", key=source.key, error="CrossSlot", detail=str(exc)[:300])
            await client.aclose()
            self.misconfigured(rt, source, str(exc))
            return
        failing = ""
        delay = POLL_SECONDS
        try:
            while not self.stop and not rt.stopping:
                try:
                    moved = await self.one_pass(rt, spider, source, stage, queue)
                    if failing:
                        rt.log.info("start_feed_recovered")
                        failing = ""
                    delay = 0.0 if moved >= source.batch else POLL_SECONDS
                except (ResponseError, *redisio.REDIS_ERRORS) as exc:
                    # WRONGTYPE (the key is not the type REDIS_START_URLS_AS_SET says) or Redis away:
                    # nothing was taken; say so once per streak and try again later
                    if failing != type(exc).__name__:
                        failing = type(exc).__name__
                        rt.log.warning("start_feed_failed", key=source.key, error=failing,
                                       detail=str(exc)[:200] if isinstance(exc, ResponseError) else "")
                    if isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc):
                        # the start key's, not one of Fleet's own keys: its type is not the one the spider reads
                        with contextlib.suppress(ResponseError, *redisio.REDIS_ERRORS):
                            actual = text(await client.type(source.key))
                            if actual not in ("none", source.kind):
                                self.misconfigured(rt, source, f"it is a {actual} (Redis: WRONGTYPE)")
                    delay = min(5.0, max(delay, POLL_SECONDS) * 2)
                if delay:
                    self.wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), delay)
            with contextlib.suppress(Exception):
                await stage.leave()
        finally:
            await client.aclose()

    async def one_pass(self, rt: FleetPort, spider: Spider, source: StartSource, stage: StartStage,
                       queue: FleetQueue) -> int:
        staged = await stage.stage(rt.config.redis_run_now(), source.batch, low=source.batch,
                                   registration=rt.config.lease_seconds)
        if not staged.entries:
            return 0
        envs, refused = self.convert(rt, spider, source, staged)
        for fields in refused:
            await queue.dead("", "", fields, maxlen=rt.config.dlq_maxlen)
        enq = skipped = 0
        if envs:
            enq, skipped = await queue.seed(staged.run, envs)
        await stage.done()
        rt.stats.inc_value("fleet/start_entries", len(staged.entries))
        rt.log.info("start_entries_seeded", key=source.key, run=staged.run, entries=len(staged.entries),
                    enqueued=enq, skipped=skipped, refused=len(refused))
        return len(staged.entries)

    def convert(self, rt: FleetPort, spider: Spider, source: StartSource,
                staged: Staged) -> tuple[list[Envelope], list[dict[str, str]]]:
        """Envelopes of the staged entries, and the DLQ fields of each entry or request refused."""
        envs: list[Envelope] = []
        refused: list[dict[str, str]] = []
        user: Any = spider  # a scrapy-redis RedisMixin spider (scraper.worker.redisspider.is_redis_spider)
        make = user.make_request_from_data

        def refuse(reason: str, detail: str, raw: bytes, url: str = "") -> None:
            rt.stats.inc_value("fleet/start_refused")
            rt.log.warning("start_entry_refused", key=source.key, reason=reason, detail=detail[:200])
            refused.append({
                "class": "D", "reason": f"start_entry:{reason}", "detail": detail[:500], "url": url,
                "run": staged.run, "fp": "", "attempts": "{}", "proxies": "[]",
                "worker": rt.config.worker_id, "at": now_iso(), "source": source.key,
                # never unpickled, never executed: its first 4 KiB as text, for the operator to look at
                "raw": raw[:4096].decode("utf-8", "replace"),
            })

        for data in staged.entries:
            problem = entry_problem(data, source.encoding)
            if problem is not None:
                refuse(problem, f"start key entry of {len(data)} bytes is not a URL or JSON", data)
                continue
            try:
                out: Any = make(data)
                reqs = [out] if isinstance(out, Request) else list(itertools.islice(out or (), MAX_REQUESTS_PER_ENTRY))
            except Exception as exc:  # the spider's code, on hostile data
                refuse("make_request_failed", f"{type(exc).__name__}: {exc}", data)
                continue
            if not reqs:
                refuse("no_request", "make_request_from_data returned no request", data)
            for req in reqs:
                if not isinstance(req, Request):
                    refuse("not_a_request", f"make_request_from_data gave a {type(req).__name__}", data)
                    continue
                why = refusal(req.url, rt.config.schemes)
                if why is not None:
                    refuse(why.reason, str(why), data, req.url[:2000])
                    continue
                try:
                    env = Envelope.from_request(req, spider_name=str(spider.name), run=staged.run, spider=spider)
                except EnvelopeError as exc:
                    refuse("bad_request", str(exc), data, req.url[:2000])
                    continue
                # a start request, as `fleet seed` seeds one: a dont_filter entry (scrapy-redis makes
                # every one dont_filter) does not mark its URL SEEN for the requests discovered later,
                # and pushing the same entry again in a run is still SEEN (scraper.queue.startfp)
                envs.append(mark_start(env))
        return envs, refused

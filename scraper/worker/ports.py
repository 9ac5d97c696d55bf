"""The typed boundary between Scrapy's components and the Fleet runtime.

Why a Protocol: the scheduler, the downloader middlewares (classify, proxy, robots), the spider middleware
(commit), the object pipeline (pipelines.objects), the catch-all downloader (scraper.worker.settle), the
watchdog, the download handlers and the CLI's worker process all reach the runtime through the crawler.
Typed ``Any``, every private attribute was within reach, and nothing said which calls the runtime must
keep when it is refactored. :class:`FleetPort` names exactly what they may call; anything else on the
runtime is its own business.

Why a static Protocol and not an abstract base class: it costs nothing at run time (no isinstance, no
extra indirection: a middleware still calls the runtime's bound method directly, once per page), and
the scheduler's ``self.rt: FleetPort = FleetRuntime(...)`` is where mypy proves the runtime satisfies it.

The ledger record (``LeaseState``, one per leased request) is the runtime's; components read its fields
(``claim``, ``settled``, ``env``, ``request``, ``status``, ``pending``, ``items``, ``discovered``,
``exhausted``) and write none of them but ``request`` (the scheduler, for a redirect that continues a
lease, in the ``follow`` it hands to ``continued``); every other change goes through a FleetPort method
(``proxy_chosen`` for the proxy middleware).

``fleet_of(crawler)`` is the one way to find the runtime (``None`` outside a Fleet worker: the
components then stand aside, as plain Scrapy runs them); ``attach`` is the scheduler's, which creates it.
This module imports no implementation at run time, so middlewares/ and pipelines/ depend on it, never the
reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.statscollectors import StatsCollector

    from scraper.infra.config import FleetConfig
    from scraper.infra.log import Logger
    from scraper.policy.taxonomy import Verdict
    from scraper.worker.gate import Gate
    from scraper.worker.ledger import LeaseState
    from scraper.worker.proxies import ProxyPool
    from scraper.worker.queueport import QueuePort

__all__ = ["CRAWLER_ATTR", "VOID_MESSAGE", "FleetPort", "attach", "fleet_of"]

# the crawler attribute that holds the runtime (set by the scheduler when Scrapy creates it)
CRAWLER_ATTR = "fleet"
# what an errback sees of a speculative fetch whose lease Redis did not grant (the fetch is dropped)
VOID_MESSAGE = "fleet: speculative fetch dropped (its lease was not granted)"


class FleetPort(Protocol):
    """What Scrapy-side components may call on the runtime (scraper.worker.runtime.FleetRuntime)."""

    # -- read-only views ---------------------------------------------------------------------------

    @property
    def config(self) -> FleetConfig: ...  # the CLI: shutdown grace

    @property
    def log(self) -> Logger: ...  # the worker's bound logger (stable event names)

    @property
    def stats(self) -> StatsCollector: ...

    @property
    def proxies(self) -> ProxyPool: ...  # the proxy middleware and the rendering handler

    @property
    def gate(self) -> Gate | None: ...  # the politeness gate (None: not gated); the worker metrics read it

    @property
    def queue(self) -> QueuePort | None: ...  # None until open(); the scheduler seeds orphans with it

    @property
    def spider(self) -> Spider | None: ...

    @property
    def client(self) -> Redis | None: ...  # None until open(); the robots.txt cache (middlewares.robots)

    @property
    def buffer(self) -> Collection[LeaseState]: ...  # leases held locally, not yet handed to Scrapy

    @property
    def active(self) -> Mapping[str, LeaseState]: ...  # leases handed to Scrapy, by lease id

    @property
    def stopping(self) -> bool: ...  # no more leasing (shutdown requested)

    @property
    def closed(self) -> bool: ...

    @property
    def fatal(self) -> str | None: ...  # why the worker gave up (exit non-zero), if it did

    @property
    def exit_code(self) -> int: ...

    def config_fatal(self, reason: str, event: str) -> None: ...  # stop, exit 1 with reason (scraper.worker.health)

    # closing: unfinished work is released, never failed or retried. The CLI sets it when the shutdown
    # grace has passed and it closes the spider itself.
    releasing: bool

    # -- the scheduler -----------------------------------------------------------------------------

    async def open(self, spider: Spider) -> None: ...

    async def close(self, reason: str) -> None: ...

    def next_state(self) -> LeaseState | None: ...

    def state_for(self, request: Request) -> LeaseState | None: ...

    # a redirect of a leased request: False if ignored at once (offsite); else ``follow`` is called now or
    # after the run's SEEN was asked (scraper.worker.redirects), unless the request was settled as ignored
    def continued(self, state: LeaseState, request: Request,
                  follow: Callable[[LeaseState, Request], None]) -> bool: ...

    def may_close(self) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def request_stop(self, reason: str = "signal") -> None: ...

    async def release_now(self, reason: str) -> None: ...

    # -- the downloader side (classify, proxy, scraper.worker.settle, the watchdog) -----------------------

    def drop_void(self, request: Request) -> bool: ...

    def fetched(self, state: LeaseState, response: Response, verdict: Verdict) -> None: ...

    def fail(self, state: LeaseState, verdict: Verdict, response: Response | None) -> None: ...

    def ignored(self, state: LeaseState, exc: BaseException) -> None: ...

    def defer(self, state: LeaseState, until: float, reason: str) -> None: ...

    def proxy_chosen(self, state: LeaseState, proxy_id: str) -> None: ...

    def crawl_delay(self, request: Request, delay: float) -> bool: ...

    # -- the spider side (middlewares.commit, pipelines.objects, scraper.worker.settle) ------------------

    def discovered(self, state: LeaseState, request: Request) -> None: ...

    # an item leaves the callback (CommitMiddleware): the request waits for it
    def item_started(self, state: LeaseState, item: Any) -> None: ...

    # the item pipelines are done with it (ObjectPipeline; item_dropped / item_error): ``yielded`` is the
    # object the callback yielded, ``item`` what the user's pipelines made of it; an item no lease of this
    # worker yielded is ignored
    def item_passed(self, yielded: Any, item: Any) -> None: ...

    def item_dropped(self, yielded: Any) -> None: ...

    def item_failed(self, yielded: Any, exc: BaseException) -> None: ...

    def output_done(self, state: LeaseState) -> None: ...

    def callback_failed(self, state: LeaseState, exc: BaseException) -> None: ...

    # -- the worker metrics (scraper.worker.exporter) ---------------------------------------------------

    def time_commits(self, observe: Callable[[float], None] | None) -> None: ...


def attach(crawler: Crawler, runtime: FleetPort) -> None:
    """Make ``runtime`` the crawler's (the scheduler, once per crawler)."""
    setattr(crawler, CRAWLER_ATTR, runtime)


def fleet_of(crawler: Crawler) -> FleetPort | None:
    """The crawler's runtime, or None outside a Fleet worker (plain Scrapy, unit tests)."""
    runtime: FleetPort | None = getattr(crawler, CRAWLER_ATTR, None)
    return runtime

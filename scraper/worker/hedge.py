"""Hedged fetches (opt-in per spider): a GET that has not answered after its domain's observed p95
latency is sent a second time, through another proxy when there is one; the first answer wins and the
other attempt is cancelled.

Why: a few slow answers (a stalled keep-alive connection, a slow proxy, one overloaded backend) hold a
concurrency slot and the request's lease for seconds while the rest of the site answers in
milliseconds. Sending a copy once a request is slower than 95 % of its domain's recent answers cuts
that tail for a bounded extra load ("The Tail at Scale", Dean & Barroso).

Why in the download handler (:class:`scraper.worker.download.FleetHTTPDownloadHandler` calls
:meth:`Hedger.fetch`): the race happens below every middleware, so the request still goes through
the middlewares once, the classifier sees one response, the ledger settles once and one object is
written. The loser's download is cancelled (its connection aborted, its timeout timer cancelled).

Bounds, so that hedging never multiplies the load on a site:

* only idempotent methods (GET, HEAD), never a rendered (Playwright) request (those go to another
  handler anyway), and only when the spider sets ``FLEET_HEDGE = True`` (off: no cost at all);
* the delay is the domain's p95 over its last :data:`WINDOW` answers, once it has :data:`MIN_SAMPLES`
  of them, never below ``FLEET_HEDGE_MIN_DELAY`` (0.05 s); at most :data:`MAX_DOMAINS` domains are
  remembered per worker (least recently used out);
* a token bucket per worker: every eligible request adds ``FLEET_HEDGE_RATE`` (0.05) of a token,
  capped at :data:`BURST`; a hedge takes one, and it starts empty, so at every moment
  hedges <= rate x requests.

What a hedge leaves: stats ``fleet/hedge/requests`` (eligible requests), ``sent``, ``won`` (the hedge
answered first), ``lost`` (the first attempt did), ``failed`` (both failed: the first attempt's error
is the outcome), ``denied`` (slow, but the bucket was empty); a ``request_hedged`` log event per race;
the worker metric ``fleet_worker_hedges`` (scraper.worker.exporter). The recorded latency of a won
race is the hedge's own (the stalled attempt's is unknown): the estimator learns how fast the site
answers, not how long a stall lasted.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response
from scrapy.settings import BaseSettings
from scrapy.utils.httpobj import urlparse_cached

from scraper.infra import log
from scraper.worker.ports import fleet_of
from scraper.worker.proxies import Proxy

__all__ = [
    "BURST",
    "DEFAULT_MIN_DELAY",
    "DEFAULT_RATE",
    "MAX_DOMAINS",
    "MIN_SAMPLES",
    "STATS_PREFIX",
    "WINDOW",
    "Budget",
    "HedgeSettings",
    "Hedger",
    "Latencies",
    "hedge_settings",
]

WINDOW = 64  # recent answers per domain the p95 is taken over
MIN_SAMPLES = 20  # answers a domain needs before any of its requests is hedged
MAX_DOMAINS = 1024  # domains remembered per worker
BURST = 10.0  # tokens the bucket saves at most
DEFAULT_RATE = 0.05
DEFAULT_MIN_DELAY = 0.05
STATS_PREFIX = "fleet/hedge/"
_IDEMPOTENT = frozenset({"GET", "HEAD"})

Download = Callable[[Request], Awaitable[Response]]


class HedgeSettings:
    """A spider's hedge settings, checked (hostile input: a bad value is a one-line start-up error)."""

    __slots__ = ("enabled", "min_delay", "rate")

    def __init__(self, enabled: bool, rate: float, min_delay: float) -> None:
        self.enabled = enabled
        self.rate = rate
        self.min_delay = min_delay


def _number(settings: BaseSettings, name: str, default: float, top: float) -> float:
    raw = settings.get(name, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={str(raw)[:40]!r} is not a number (default {default})") from None
    if not 0.0 <= value <= top:  # NaN fails too
        raise ValueError(f"{name}={value} must be between 0 and {top}")
    return value


def hedge_settings(settings: BaseSettings) -> HedgeSettings:
    """``FLEET_HEDGE`` (bool), ``FLEET_HEDGE_RATE`` (0..1), ``FLEET_HEDGE_MIN_DELAY`` (seconds, 0..600);
    ValueError with a one-line message on a value Fleet cannot use."""
    try:
        enabled = settings.getbool("FLEET_HEDGE", False)
    except ValueError:
        raise ValueError(f"FLEET_HEDGE={str(settings.get('FLEET_HEDGE'))[:40]!r} is not a boolean") from None
    return HedgeSettings(enabled, _number(settings, "FLEET_HEDGE_RATE", DEFAULT_RATE, 1.0),
                         _number(settings, "FLEET_HEDGE_MIN_DELAY", DEFAULT_MIN_DELAY, 600.0))


class Latencies:
    """Recent answer times per domain and their p95: bounded (``window`` per domain, ``max_domains``)."""

    def __init__(self, window: int = WINDOW, min_samples: int = MIN_SAMPLES, max_domains: int = MAX_DOMAINS) -> None:
        self.window = window
        self.min_samples = min_samples
        self.max_domains = max_domains
        self._samples: OrderedDict[str, deque[float]] = OrderedDict()
        self._p95: dict[str, float] = {}  # cached until the domain's next sample

    def add(self, domain: str, seconds: float) -> None:
        d = self._samples.get(domain)
        if d is None:
            d = self._samples[domain] = deque(maxlen=self.window)
            if len(self._samples) > self.max_domains:
                old, _ = self._samples.popitem(last=False)
                self._p95.pop(old, None)
        else:
            self._samples.move_to_end(domain)
        d.append(seconds)
        self._p95.pop(domain, None)

    def p95(self, domain: str) -> float | None:
        """The domain's p95 answer time, or None while it has fewer than ``min_samples`` answers."""
        cached = self._p95.get(domain)
        if cached is not None:
            return cached
        d = self._samples.get(domain)
        if d is None or len(d) < self.min_samples:
            return None
        ordered = sorted(d)
        value = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        self._p95[domain] = value
        return value


class Budget:
    """Token bucket of hedges against requests: ``rate`` of a token per request, one per hedge."""

    def __init__(self, rate: float, burst: float = BURST) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = 0.0

    def request(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.rate)

    def take(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve a cancelled loser's outcome, so that asyncio never reports it as unretrieved."""
    if not task.cancelled():
        task.exception()


def _answered(task: asyncio.Future[Any]) -> bool:
    """A finished attempt that got a response (an exception is no answer: the other may still get one)."""
    return not task.cancelled() and task.exception() is None


def _proxy_auth(url: str) -> bytes | None:
    """The Proxy-Authorization value for a proxy URL's credentials (as Scrapy's HttpProxyMiddleware
    computes it, latin-1), or None when it has none."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("latin-1", "replace")
    return b"Basic " + base64.b64encode(creds)


def _route(request: Request, proxy: Proxy) -> None:
    """Send ``request`` through ``proxy`` (meta and header as the proxy middlewares would leave them:
    Scrapy's HttpProxyMiddleware moves a proxy URL's credentials into the header)."""
    request.meta["proxy"] = proxy.display
    request.meta["fleet_proxy_id"] = proxy.id
    auth = _proxy_auth(proxy.url)
    if auth is None:
        request.headers.pop(b"Proxy-Authorization", None)
        request.meta.pop("_auth_proxy", None)
    else:
        request.headers[b"Proxy-Authorization"] = auth
        request.meta["_auth_proxy"] = proxy.display


class Hedger:
    """The hedging of one worker's HTTP handler: the latency estimator, the budget and the race."""

    def __init__(self, crawler: Crawler, settings: HedgeSettings) -> None:
        self.crawler = crawler
        self.min_delay = settings.min_delay
        self.latencies = Latencies()
        self.budget = Budget(settings.rate)
        self.timeout = crawler.settings.getfloat("DOWNLOAD_TIMEOUT", 180.0)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Hedger | None:
        """None unless the spider set ``FLEET_HEDGE`` (the handler then does exactly what it did)."""
        settings = hedge_settings(crawler.settings)
        return cls(crawler, settings) if settings.enabled else None

    @staticmethod
    def eligible(request: Request) -> bool:
        return request.method in _IDEMPOTENT and not request.meta.get("playwright")

    def _inc(self, what: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(STATS_PREFIX + what)

    async def fetch(self, request: Request, download: Download) -> Response:
        """``download(request)``, hedged once it is slower than its domain's p95 (budget allowing)."""
        domain = (urlparse_cached(request).hostname or "").lower()
        port = fleet_of(self.crawler)
        gate = port.gate if port is not None else None
        if gate is not None and gate.gated(domain):
            # the fleet's per-domain limit or spacing governs this domain: a second request would break it
            self._inc("gated")
            return await download(request)
        self.budget.request()
        self._inc("requests")
        started = time.monotonic()
        p95 = self.latencies.p95(domain)
        if p95 is None:
            response = await download(request)
            self.latencies.add(domain, time.monotonic() - started)
            return response
        delay = max(p95, self.min_delay)
        primary = asyncio.ensure_future(download(request))
        try:
            await asyncio.wait((primary,), timeout=delay)
            if not primary.done():
                if not self.budget.take():
                    self._inc("denied")
                else:
                    return await self._race(request, primary, domain, started, delay, download)
            response = await primary
            self.latencies.add(domain, time.monotonic() - started)
            return response
        finally:
            if not primary.done():  # cancelled from outside (the watchdog, shutdown)
                primary.add_done_callback(_quiet)
                primary.cancel()

    async def _race(self, request: Request, primary: asyncio.Future[Response], domain: str, started: float,
                    delay: float, download: Download) -> Response:
        copy = request.replace()
        elapsed = time.monotonic() - started
        timeout = float(request.meta.get("download_timeout") or self.timeout)
        copy.meta["download_timeout"] = max(0.01, timeout - elapsed)  # the hedge never outlives the first
        rt = fleet_of(self.crawler)
        pool = rt.proxies if rt is not None else None
        first_proxy = request.meta.get("fleet_proxy_id")
        alt = pool.alternative(domain, first_proxy) if pool and isinstance(first_proxy, str) else None
        if alt is not None and pool is not None:
            _route(copy, alt)
            pool.started(alt.id)
        self._inc("sent")
        hedge_started = time.monotonic()
        hedge = asyncio.ensure_future(download(copy))
        pending: set[asyncio.Future[Response]] = {primary, hedge}
        winner: asyncio.Future[Response] | None = None
        try:
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winner = next((t for t in (primary, hedge) if t in done and _answered(t)), None)
        except BaseException:  # cancelled from outside (watchdog, shutdown): the other proxy's count goes back
            if alt is not None and pool is not None:
                pool.finished(alt.id)
            raise
        finally:
            for t in pending:
                t.add_done_callback(_quiet)
                t.cancel()
        outcome = "failed" if winner is None else "won" if winner is hedge else "lost"
        self._inc(outcome)
        state = rt.state_for(request) if rt is not None else None
        failed = hedge.done() and not hedge.cancelled() and hedge.exception() is not None
        log.get_logger().info("request_hedged", domain=domain, after_ms=round(delay * 1000, 1), outcome=outcome,
                              fp=state.env.fp if state is not None else None, proxy=first_proxy,
                              hedge_proxy=alt.id if alt is not None else first_proxy,
                              hedge_error=type(hedge.exception()).__name__ if failed else None)
        if alt is not None and pool is not None:
            if winner is hedge:  # the answer is the other proxy's: its health, the object's _meta
                pool.finished(str(first_proxy))
                _route(request, alt)
                if rt is not None and state is not None:
                    rt.proxy_chosen(state, alt.id)
            else:
                pool.finished(alt.id)
        if winner is None:
            return primary.result()  # raises the first attempt's error
        now = time.monotonic()
        if winner is hedge:
            self.latencies.add(domain, now - hedge_started)
            request.meta["download_latency"] = now - started
        else:
            self.latencies.add(domain, now - started)
        return winner.result()

"""Fleet configuration: every ``FLEET_*`` environment variable, read once, documented once.

Why a frozen dataclass and not Scrapy settings: the CLI (``fleet seed``, ``fleet status``…) needs the
same configuration without building a crawler, and workers need it before Scrapy starts. Why in scraper
and not settings/: every part of Fleet reads it, and scraper never imports settings (``settings.fleet``
re-exports it for user code that imported it from there).

This table is the one place the ``FLEET_*`` variables are documented.

| variable | default | meaning |
|---|---|---|
| FLEET_REDIS_URL | embedded | ``redis://``, ``rediss://`` or ``unix://`` URL. Unset: an embedded redis-server under FLEET_HOME |
| FLEET_HOME | ``~/.fleet`` | where the embedded Redis keeps its socket, AOF and logs |
| FLEET_STORE | ``file://./data`` | object store: ``s3://bucket/prefix`` or ``file:///path`` |
| FLEET_SPIDER_MODULES | (none) | comma list of importable modules holding extra spiders |
| FLEET_SPIDERS_DIR | (none) | directory of YAML spider specs |
| FLEET_CHROMIUM | (chromium on PATH) | Chromium binary for spiders that render pages (`render_js`; scraper.worker.render) |
| FLEET_LEASE_SECONDS | 60 | lease length; live workers extend their leases every third of it |
| FLEET_DEDUP_TTL | 172800 | seconds SEEN/DONE records of a run live (48 h, longer than any retry window); 1 to 315360000 (10 years) |
| FLEET_CONCURRENCY | 32 | concurrent requests per worker (CONCURRENT_REQUESTS), 1 to 4096 |
| FLEET_PREFETCH | concurrency/4 (min 4) | leases a worker holds in its local buffer beyond the ones being fetched |
| FLEET_QUEUE_SHARDS | 1 | shards of each spider's queue, 1 to 64: each a hash tag of its own, so on a Redis Cluster one spider's READY/IN-FLIGHT/DELAYED/SEEN/DONE spread over several primaries (an entry lives in its fingerprint's shard; scraper/queue/shards.py). Recorded in Redis by the first worker or seed; operator commands read it from there. A different value is refused while the spider has work queued, in flight, delayed or parked, or idle workers waiting for work (a running worker keeps the count it started with: stop the workers, then change it). 1: no change for small users |
| FLEET_COMMIT_BATCH | 64 | commits (DONE + ack + discovered requests) flushed per Redis round trip at most |
| FLEET_COMMIT_INTERVAL | 0.02 | seconds a commit may wait to share a round trip |
| FLEET_RETRY_BASE | 2 | class-A backoff base seconds (full jitter: U(0, min(cap, base*2^n))) |
| FLEET_RETRY_CAP | 120 | class-A backoff cap, seconds |
| FLEET_RETRY_MAX | 3 | class-A retries before the request goes to the DLQ (``exhausted:A``) |
| FLEET_ROTATE_MAX | 5 | class-B proxy rotations before the DLQ (``exhausted:B``) |
| FLEET_PROXIES | (none) | a file of proxy URLs (one a line) or a comma list |
| FLEET_DLQ_MAXLEN | 100000 | the DLQ stream is capped at about this many entries |
| FLEET_SHUTDOWN_GRACE | 25 | seconds in-flight requests get to finish after SIGTERM/SIGINT |
| FLEET_REDIS_OUTAGE_MAX | 300 | seconds a worker waits for Redis to come back before exiting non-zero |
| FLEET_MAX_LOST_DELIVERIES | 10 | a request whose lease expired this many times (its worker died or stalled holding it: e.g. a page that gets every worker OOM-killed) goes to the DLQ as D `poison:redelivered` unfetched; 0 = never |
| FLEET_STORE_OUTAGE_MAX | 300 | seconds a worker waits for the object store (FLEET_STORE) to come back before exiting 3. An outage is a write that fails while a probe write fails too (store down, credentials refused, missing bucket, disk full or read-only); meanwhile it leases nothing and holds its written-but-unstored requests, which it writes once the store is back or releases to READY when it gives up. A write that fails while the probe succeeds is that object's own failure: its request alone is retried (class A) or, for a key the store refuses, goes to the DLQ |
| FLEET_STORE_RAW | all | which response bodies are kept under raw/: ``all``, ``items`` (pages that yielded items) or ``none`` |
| FLEET_WORKER_ID | host-pid | identity recorded in ``_meta`` and logs, and in lease tokens and the wake list: unique per live process |
| FLEET_ALERT_WEBHOOK | (none) | URL receiving breaker alerts (a `user:password@` in it goes as HTTP basic auth) |
| FLEET_METRICS_PORT | (off) | TCP port on which each worker serves its Prometheus metrics (`/metrics`, all interfaces; scraper/worker/exporter.py): pages, items, objects, outcomes per class and reason, retries, proxy bans per proxy, dedup skips, fetch and commit latency. Unset or empty: no server. A port already taken is logged (`worker_metrics_unavailable`) and the worker runs without metrics (`fleet run` starts several workers on one machine: only the first gets the port) |
| FLEET_SCHEMES | http,https | URL schemes workers fetch (comma list of http, https, ftp, file, s3, data). Any other URL is refused wherever it appears: ``fleet seed`` rejects it, a link to it is skipped (counted as ``fleet/discovered_refused``), a queued or redirected one goes to the DLQ as D ``policy:scheme`` unfetched (scraper/policy/urls.py). ``file`` reads the worker's own files: never on unless named here. Independent of FLEET_ALLOW_PRIVATE (``0`` refuses every scheme but http(s) anyway) |
| FLEET_ALLOW_PRIVATE | 1 | ``0``: never fetch a host that is or resolves to a non-public address (loopback, private, link-local, metadata service…): such requests go to the DLQ as D ``policy:private_address`` (middlewares/private.py). ``1``: allowed (the embedded demo site is on 127.0.0.1) |
| FLEET_ROBOTS_TTL | 86400 | with ``ROBOTSTXT_OBEY`` on: seconds a site's robots.txt is reused fleet-wide from Redis (``fleet:robots:{origin}``) before one worker fetches it again. A robots.txt that could not be fetched (5xx, 429, network error) is retried after at most 60 s meanwhile, and the site's requests wait (class A ``robots:unavailable``) (middlewares/robots.py) |
| FLEET_BREAKER_WINDOW | 20 | drift breaker: outcomes of item pages remembered per (spider, domain) |
| FLEET_BREAKER_MIN_EVENTS | 5 | drift breaker: C events in the window needed to open |
| FLEET_BREAKER_RATE | 0.5 | drift breaker: C share of the window needed to open (0 to 1) |
| FLEET_BREAKER_COOLDOWN | 1800 | seconds open before one half-open probe; doubles per re-trip, capped at 8 h |
| FLEET_REDIS_RUN | ``redis-%Y%m%d`` | the run of requests a scrapy-redis spider's start key feeds (README, Migrating from scrapy-redis): a run id or a ``strftime`` pattern of one, in UTC at the time an entry is taken from the key. A URL pushed twice within one run is fetched once (SEEN), so the default gives a pushed URL one fetch a day; ``redis-%Y%m%dT%H`` one an hour, a fixed name once per FLEET_DEDUP_TTL |
| FLEET_LOG_LEVEL | INFO | level of Fleet's events (DEBUG, INFO, WARNING, ERROR, CRITICAL); Scrapy's and other libraries' records pass at this level but never below INFO (Scrapy's start-up and stats dumps are DEBUG). `fleet demo`: WARNING. With a progress bar, `fleet run` shows its workers' events from WARNING up unless this is set |
| FLEET_LOG_FORMAT | auto | ``json``: one JSON object a line; ``console``: ``time [level] event key=value`` for people (coloured on a terminal unless NO_COLOR is set); ``auto``: console when stderr is a terminal, else JSON. `fleet run`, `fleet demo`, `fleet seed --urls` (files of 1 MiB or more, or stdin) and `fleet export` draw a progress bar on stderr only when it is a terminal, the format is not json and CI is unset |
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scraper.policy.urls import DEFAULT_SCHEMES, parse_schemes

if TYPE_CHECKING:
    from scraper.queue.client import BreakerParams

__all__ = ["MAX_CONCURRENCY", "ConfigError", "FleetConfig"]

#: The most concurrent requests one worker takes (FLEET_CONCURRENCY, --concurrency): its prefetch buffer
#: leases a quarter of it again, and a typo of a million would lease a whole queue into one process.
MAX_CONCURRENCY = 4096


class ConfigError(ValueError):
    """A FLEET_* variable has a value Fleet cannot use; the message names it and the fix."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _float(
    env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; unset it or give e.g. {default}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}={raw!r} must be a finite number >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={raw!r} must be <= {maximum}")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(env: Mapping[str, str]) -> str:
    level = (_get(env, "FLEET_LOG_LEVEL") or "INFO").upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL", "NOTSET": "DEBUG"}.get(level, level)  # logging's aliases
    if level not in _LOG_LEVELS:
        raise ConfigError(f"FLEET_LOG_LEVEL={level!r} is not a level: use one of {', '.join(_LOG_LEVELS)}")
    return level


def _webhook(env: Mapping[str, str]) -> str | None:
    """FLEET_ALERT_WEBHOOK: an http(s) URL with a host, or unset. Why checked here: a bad one was only found
    when the first breaker opened, by then the alert it was for is lost. The URL is never echoed (a Slack
    webhook's path is its secret)."""
    raw = _get(env, "FLEET_ALERT_WEBHOOK")
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed port or IPv6 host
        ok = False
    if not ok:
        raise ConfigError("FLEET_ALERT_WEBHOOK is not an http(s) URL with a host (its value is not shown: "
                          "a webhook URL is a secret)")
    return raw


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; unset it or give e.g. {default}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={raw!r} must be <= {maximum}")
    return value


def _port(env: Mapping[str, str], name: str) -> int | None:
    if _get(env, name) is None:
        return None
    value = _int(env, name, 0, minimum=1)
    if value > 65535:
        raise ConfigError(f"{name}={value} is not a TCP port: use 1-65535, or unset it")
    return value


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(env: Mapping[str, str]) -> str | None:
    """FLEET_REDIS_URL, checked as redis-py will parse it: a mistake is a one-line configuration error
    here, not a traceback from the first command that connects. The messages never repeat the URL (it
    may hold a password)."""
    raw = _get(env, "FLEET_REDIS_URL")
    if raw is None:
        return None
    scheme, sep, _ = raw.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        shown = f"{scheme[:20]}://" if sep else "no scheme"
        raise ConfigError(f"FLEET_REDIS_URL must start with redis://, rediss:// or unix:// (got {shown}); "
                          "unset it to use the embedded Redis")
    from redis.connection import parse_url

    try:
        parse_url(raw)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        raise ConfigError(
            "FLEET_REDIS_URL is not a valid Redis URL: use redis://[[user]:password@]host[:port][/db], "
            "rediss://... for TLS, or unix:///path/to/redis.sock (a port is a number, IPv6 hosts go in [])"
        ) from None
    return raw


def _schemes(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _get(env, "FLEET_SCHEMES")
    if raw is None:
        return DEFAULT_SCHEMES
    try:
        return parse_schemes(raw)
    except ValueError as exc:
        raise ConfigError(f"FLEET_SCHEMES: {exc}") from None


def _redis_run(env: Mapping[str, str]) -> str:
    """FLEET_REDIS_RUN checked where it is set: its expansion must be a run id (scraper.queue.names)."""
    from scraper.queue.names import is_name

    raw = _get(env, "FLEET_REDIS_RUN") or "redis-%Y%m%d"
    try:
        shown = time.strftime(raw, time.gmtime(0))
    except ValueError:
        shown = ""
    if not is_name(shown) or not is_name(time.strftime(raw, time.gmtime())):
        raise ConfigError(f"FLEET_REDIS_RUN={raw[:60]!r} must be a run id or a strftime pattern of one "
                          "(letters, digits, _ . -; e.g. redis-%Y%m%d)")
    return raw


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class FleetConfig:
    """Typed view of the environment; build it with :meth:`from_env`."""

    redis_url: str | None = None
    store: str = "file://./data"
    spider_modules: tuple[str, ...] = ()
    spiders_dir: str | None = None
    chromium: str | None = None
    lease_seconds: float = 60.0
    dedup_ttl: int = 48 * 3600
    concurrency: int = 32
    prefetch: int | None = None
    commit_batch: int = 64
    queue_shards: int = 1
    commit_interval: float = 0.02
    retry_base: float = 2.0
    retry_cap: float = 120.0
    retry_max: int = 3
    rotate_max: int = 5
    proxies: str | None = None
    dlq_maxlen: int = 100_000
    shutdown_grace: float = 25.0
    redis_outage_max: float = 300.0
    max_lost_deliveries: int = 10
    store_outage_max: float = 300.0
    store_raw: str = "all"
    worker_id: str = field(default_factory=_default_worker_id)
    alert_webhook: str | None = None
    metrics_port: int | None = None
    allow_private: bool = True
    robots_ttl: float = 86400.0
    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    log_level: str = "INFO"
    log_format: str = "auto"
    breaker_window: int = 20
    breaker_min_events: int = 5
    breaker_rate: float = 0.5
    breaker_cooldown: float = 1800.0
    redis_run: str = "redis-%Y%m%d"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FleetConfig:
        e = os.environ if env is None else env
        modules = tuple(m.strip() for m in (_get(e, "FLEET_SPIDER_MODULES") or "").split(",") if m.strip())
        store_raw = (_get(e, "FLEET_STORE_RAW") or "all").lower()
        if store_raw not in {"all", "items", "none"}:
            raise ConfigError(f"FLEET_STORE_RAW={store_raw!r}: use all, items or none")
        prefetch_raw = _get(e, "FLEET_PREFETCH")
        log_format = (_get(e, "FLEET_LOG_FORMAT") or "auto").lower()
        if log_format not in {"auto", "json", "console"}:
            raise ConfigError(f"FLEET_LOG_FORMAT={log_format!r}: use json, console or auto (console on a terminal)")
        return cls(
            redis_url=_redis_url(e),
            store=_get(e, "FLEET_STORE") or "file://./data",
            spider_modules=modules,
            spiders_dir=_get(e, "FLEET_SPIDERS_DIR"),
            chromium=_get(e, "FLEET_CHROMIUM"),
            lease_seconds=_float(e, "FLEET_LEASE_SECONDS", 60.0, minimum=0.2),
            dedup_ttl=_int(e, "FLEET_DEDUP_TTL", 48 * 3600, minimum=1, maximum=10 * 365 * 86400),
            concurrency=_int(e, "FLEET_CONCURRENCY", 32, minimum=1, maximum=MAX_CONCURRENCY),
            prefetch=None if prefetch_raw is None else _int(e, "FLEET_PREFETCH", 0, minimum=0),
            commit_batch=_int(e, "FLEET_COMMIT_BATCH", 64, minimum=1),
            queue_shards=_int(e, "FLEET_QUEUE_SHARDS", 1, minimum=1, maximum=64),
            commit_interval=_float(e, "FLEET_COMMIT_INTERVAL", 0.02),
            retry_base=_float(e, "FLEET_RETRY_BASE", 2.0),
            retry_cap=_float(e, "FLEET_RETRY_CAP", 120.0),
            retry_max=_int(e, "FLEET_RETRY_MAX", 3),
            rotate_max=_int(e, "FLEET_ROTATE_MAX", 5),
            proxies=_get(e, "FLEET_PROXIES"),
            dlq_maxlen=_int(e, "FLEET_DLQ_MAXLEN", 100_000, minimum=10),
            shutdown_grace=_float(e, "FLEET_SHUTDOWN_GRACE", 25.0),
            redis_outage_max=_float(e, "FLEET_REDIS_OUTAGE_MAX", 300.0),
            max_lost_deliveries=_int(e, "FLEET_MAX_LOST_DELIVERIES", 10, minimum=0),
            store_outage_max=_float(e, "FLEET_STORE_OUTAGE_MAX", 300.0),
            store_raw=store_raw,
            worker_id=_get(e, "FLEET_WORKER_ID") or _default_worker_id(),
            alert_webhook=_webhook(e),
            metrics_port=_port(e, "FLEET_METRICS_PORT"),
            allow_private=(_get(e, "FLEET_ALLOW_PRIVATE") or "1").lower() not in {"0", "false", "no"},
            robots_ttl=_float(e, "FLEET_ROBOTS_TTL", 86400.0, minimum=1.0),
            schemes=_schemes(e),
            log_level=_log_level(e),
            log_format=log_format,
            breaker_window=_int(e, "FLEET_BREAKER_WINDOW", 20, minimum=1),
            breaker_min_events=_int(e, "FLEET_BREAKER_MIN_EVENTS", 5, minimum=1),
            breaker_rate=_float(e, "FLEET_BREAKER_RATE", 0.5, maximum=1.0),
            breaker_cooldown=_float(e, "FLEET_BREAKER_COOLDOWN", 1800.0, minimum=0.1),
            redis_run=_redis_run(e),
        )

    def redis_run_now(self) -> str:
        """The run a start-key entry taken now belongs to (FLEET_REDIS_RUN, expanded in UTC)."""
        return time.strftime(self.redis_run, time.gmtime())

    def breaker_params(self) -> BreakerParams:
        from scraper.queue.client import BreakerParams

        return BreakerParams(
            window=self.breaker_window, min_events=self.breaker_min_events, rate=self.breaker_rate,
            cooldown=self.breaker_cooldown, cooldown_cap=max(self.breaker_cooldown, 8 * 3600.0),
        )

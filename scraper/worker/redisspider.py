"""scrapy-redis spiders (``RedisSpider``, ``RedisCrawlSpider``, any ``RedisMixin`` subclass) as Fleet sees them.

Why a module of its own: such a spider runs on ``fleet worker`` unchanged, but the parts of scrapy-redis
that move work (its scheduler, its dupefilter, the spider's own ``spider_idle`` pull from
``<spider>:start_urls``) pop without acknowledgement and pickle; Fleet replaces them. This module
recognises the spider and its scrapy-redis settings and checks a start-key entry as hostile input,
without importing scrapy-redis (Fleet does not depend on it; a spider that uses it brings it).
The feeding itself is :mod:`scraper.worker.redisfeed`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scrapy import Spider
from scrapy.settings import BaseSettings

__all__ = [
    "MAX_ENTRY_BYTES",
    "REPLACED_SETTINGS",
    "StartSource",
    "entry_problem",
    "fleet_redis_url",
    "is_redis_spider",
    "project_redis_url",
    "redis_url_setting",
    "replaced_in",
    "replaced_settings",
]

#: A start-key entry longer than this is refused unread (a URL or a JSON object of request data).
MAX_ENTRY_BYTES = 64 * 1024

#: scrapy-redis settings whose work Fleet's own scheduler and SEEN sets do (their values are ignored); its
#: STATS_CLASS (a Redis call per stat) and JOBDIR (pickled spider state) are replaced too (catalog.worker_settings).
REPLACED_SETTINGS = (
    "SCHEDULER", "DUPEFILTER_CLASS", "SCHEDULER_PERSIST", "SCHEDULER_QUEUE_CLASS", "SCHEDULER_QUEUE_KEY",
    "SCHEDULER_DUPEFILTER_CLASS", "SCHEDULER_DUPEFILTER_KEY", "SCHEDULER_FLUSH_ON_START",
    "SCHEDULER_IDLE_BEFORE_CLOSE", "SCHEDULER_SERIALIZER", "DUPEFILTER_DEBUG", "DUPEFILTER_KEY",
    "MAX_IDLE_TIME_BEFORE_CLOSE", "STATS_CLASS", "JOBDIR",
)


def is_redis_spider(spidercls: type[Spider]) -> bool:
    """A scrapy-redis ``RedisMixin`` subclass (by its MRO, so scrapy-redis need not be importable here)."""
    return any(c.__name__ == "RedisMixin" and c.__module__.startswith("scrapy_redis")
               for c in spidercls.__mro__)


def _custom(spidercls: type[Spider]) -> Mapping[str, Any]:
    return dict(getattr(spidercls, "custom_settings", None) or {})


def replaced_in(values: Mapping[str, Any]) -> list[str]:
    """The scrapy-redis scheduling settings among ``values`` (a custom_settings dict, or a project's
    settings module: scraper.worker.project), which Fleet replaces."""
    out = []
    for name in REPLACED_SETTINGS:
        if name not in values:
            continue
        if name in ("SCHEDULER", "DUPEFILTER_CLASS", "STATS_CLASS") and "scrapy_redis" not in str(values[name]):
            continue  # another scheduler: catalog.worker_settings replaces it as for any spider
        out.append(name)
    return out


def replaced_settings(spidercls: type[Spider], settings: BaseSettings | None = None) -> list[str]:
    """The scrapy-redis scheduling settings the spider sets (custom_settings) or its project's settings
    module set (``FLEET_PROJECT_REPLACED``, recorded by catalog.apply_project), which Fleet replaces:
    reported once at INFO when the worker starts, never an error (the same spider runs on plain
    scrapy-redis)."""
    names = set(replaced_in(_custom(spidercls)))
    if settings is not None:
        names.update(settings.getlist("FLEET_PROJECT_REPLACED"))
    return [n for n in REPLACED_SETTINGS if n in names]


def _url_of(values: Mapping[str, Any]) -> str | None:
    url = str(values.get("REDIS_URL") or "").strip()
    if url:
        return url
    host = str(values.get("REDIS_HOST") or "").strip()
    if host:
        return f"redis://{host}:{int(values.get('REDIS_PORT') or 6379)}"
    return None


def redis_url_setting(spidercls: type[Spider], settings: BaseSettings | None = None) -> str | None:
    """scrapy-redis's ``REDIS_URL`` (or ``REDIS_HOST``/``REDIS_PORT``) from the spider's custom_settings,
    else from ``settings`` (where the project's settings module put them: scraper.worker.project)."""
    own = _url_of(_custom(spidercls))
    if own is not None or settings is None:
        return own
    return project_redis_url(settings)


def project_redis_url(settings: BaseSettings) -> str | None:
    """scrapy-redis's ``REDIS_URL`` (or ``REDIS_HOST``/``REDIS_PORT``) in ``settings``, where the Scrapy
    project's settings module put them (scraper.worker.project)."""
    return _url_of({k: settings.get(k) for k in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT")})


#: settings only a scrapy-redis project sets (FLEET_PROJECT_REPLACED keeps SCHEDULER, DUPEFILTER_CLASS and
#: STATS_CLASS only when they name scrapy_redis); JOBDIR and DUPEFILTER_DEBUG are plain Scrapy's
_REDIS_PROJECT_MARKS = frozenset(REPLACED_SETTINGS) - {"JOBDIR", "DUPEFILTER_DEBUG"}


def is_redis_project(settings: BaseSettings) -> bool:
    """Whether the Scrapy project's settings module is a scrapy-redis project's (its scheduler, dupefilter or
    scheduler settings), recorded by catalog.apply_project as ``FLEET_PROJECT_REPLACED``."""
    return any(n in _REDIS_PROJECT_MARKS for n in settings.getlist("FLEET_PROJECT_REPLACED"))


def fleet_redis_url(spidercls: type[Spider] | None, settings: BaseSettings) -> str | None:
    """The scrapy-redis Redis that is Fleet's Redis when FLEET_REDIS_URL is unset: a scrapy-redis spider's
    own (custom_settings), else its project's settings module's; for any other spider and for the commands
    that load none (``scraper.cli.common.redis_url_for``: ``fleet status`` looks where ``fleet worker``
    works), the project's only when it is a scrapy-redis project (is_redis_project). A plain Scrapy project
    that happens to name a REDIS_URL (for its own pipeline, say) does not move Fleet onto that Redis."""
    if spidercls is not None and is_redis_spider(spidercls):
        own = _url_of(_custom(spidercls))
        if own is not None:
            return own
        return project_redis_url(settings)
    return project_redis_url(settings) if is_redis_project(settings) else None


@dataclass(frozen=True)
class StartSource:
    """Where and how a spider's start entries are read, as scrapy-redis's ``setup_redis`` decides."""

    key: str
    kind: str  # list, set or zset (scraper.queue.startkeys.KINDS)
    batch: int
    encoding: str

    @classmethod
    def of(cls, spider: Spider, settings: BaseSettings) -> StartSource:
        """From the spider after ``setup_redis`` ran (its ``redis_key`` formatted with ``%(name)s``,
        its encoding); the batch is the class's ``redis_batch_size``, else REDIS_START_URLS_BATCH_SIZE,
        else CONCURRENT_REQUESTS (scrapy-redis 0.9 ignores the setting; Fleet honours it)."""
        key = getattr(spider, "redis_key", None) or settings.get("REDIS_START_URLS_KEY") or "%(name)s:start_urls"
        key = str(key) % {"name": spider.name} if "%(" in str(key) else str(key)
        if not key.strip():
            raise ValueError("redis_key must not be empty")
        if settings.getbool("REDIS_START_URLS_AS_SET"):
            kind = "set"
        elif settings.getbool("REDIS_START_URLS_AS_ZSET"):
            kind = "zset"
        else:
            kind = "list"
        batch = (getattr(type(spider), "redis_batch_size", None)
                 or settings.getint("REDIS_START_URLS_BATCH_SIZE")
                 or settings.getint("CONCURRENT_REQUESTS", 16))
        encoding = str(getattr(spider, "redis_encoding", None) or settings.get("REDIS_ENCODING") or "utf-8")
        return cls(key=key, kind=kind, batch=max(1, min(int(batch), 1000)), encoding=encoding)


def entry_problem(data: bytes, encoding: str = "utf-8") -> str | None:
    """Why a start-key entry is refused unread (None: hand it to the spider's ``make_request_from_data``).

    Accepted: text in the spider's encoding that is either JSON (an object or array, as scrapy-redis's
    JSON data) or one token without whitespace or control characters (a URL, or an id a spider's own
    ``make_request_from_data`` turns into one). Everything else, a pickle above all (protocol 2+ starts
    with 0x80; protocols 0 and 1 hold newlines or control bytes), is never decoded further."""
    if len(data) > MAX_ENTRY_BYTES:
        return "too_large"
    if data[:1] == b"\x80":
        return "pickle"
    try:
        text = data.decode(encoding).strip()
    except (UnicodeDecodeError, LookupError):
        return "undecodable"
    if not text:
        return "empty"
    if text[0] in "{[":
        try:
            json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return "bad_json"
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        return "not_url_or_json"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")

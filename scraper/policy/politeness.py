"""A spider's per-domain politeness, as data: which domains the fleet gates, and how (the gate is
scraper.worker.gate; the atomic step is scraper/queue/lua/gate.lua).

Why from Scrapy's own settings: users already know ``CONCURRENT_REQUESTS_PER_DOMAIN``, ``DOWNLOAD_DELAY``,
``RANDOMIZE_DOWNLOAD_DELAY`` and ``AUTOTHROTTLE_*``; under Fleet they take their fleet-wide meaning. A value
counts when the user set it: the Scrapy project's ``settings.py`` (priority 25, scraper.worker.project; where
``scrapy startproject`` puts ``CONCURRENT_REQUESTS_PER_DOMAIN = 1`` and ``DOWNLOAD_DELAY = 1``, so a project's
spider run unchanged on N workers must not hit the site N times as hard) or the spider (``custom_settings``,
YAML ``settings``: Scrapy's ``spider`` priority, 30, or above), the spider's value winning as in Scrapy.
Below that nothing gates: Scrapy's defaults, Fleet's own settings module and the worker's default
per-domain limit (its concurrency) are all at ``project`` priority (20), so a spider and project that set
none of these keys are not gated at all (no Redis call, the hot path unchanged). A spider attribute
``domain_settings`` (YAML ``domain_settings:``) overrides them per domain:
``{"shop.example": {"DOWNLOAD_DELAY": 0.5, "CONCURRENT_REQUESTS_PER_DOMAIN": 2}}``; a key names the host
itself and its subdomains (the longest match wins).

Hostile input: ``domain_settings`` is the spider author's, but it is checked like any setting (types,
bounds, known keys) with a one-line error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["AIMD_CAP", "DOMAIN_KEYS", "IGNORED_KEYS", "DomainPolicy", "Politeness", "PolitenessError"]

#: The AIMD window's upper bound when the spider sets no CONCURRENT_REQUESTS_PER_DOMAIN of its own.
AIMD_CAP = 32
#: The keys a ``domain_settings`` entry may set.
DOMAIN_KEYS = frozenset({
    "CONCURRENT_REQUESTS_PER_DOMAIN", "DOWNLOAD_DELAY", "RANDOMIZE_DOWNLOAD_DELAY", "FLEET_DOMAIN_BURST",
    "AUTOTHROTTLE_ENABLED", "AUTOTHROTTLE_TARGET_CONCURRENCY",
})
#: Scrapy keys with no meaning under Fleet: they bound or log Scrapy's per-slot delay, which a gated domain
#: does not have (the fleet's AIMD window is the throttle; spacing is DOWNLOAD_DELAY's and Crawl-delay's).
IGNORED_KEYS = ("AUTOTHROTTLE_START_DELAY", "AUTOTHROTTLE_MAX_DELAY", "AUTOTHROTTLE_DEBUG")
_SPIDER_PRIORITY = 30  # scrapy.settings.SETTINGS_PRIORITIES["spider"]
#: A Scrapy project's settings module (scraper.worker.project.PRIORITY): the lowest priority a politeness value
#: counts at (and an ignored key set there is named too); Fleet's own defaults are below it, at 20.
_PROJECT_PRIORITY = 25
_MAX_DELAY = 3600.0
_MAX_LIMIT = 10_000


class PolitenessError(ValueError):
    """A politeness setting that cannot be used (one line: which key, why)."""


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """What the fleet holds one domain to. ``limit`` 0: no concurrency limit; ``delay`` 0: no spacing."""

    limit: int = 0
    delay: float = 0.0
    randomize: bool = False
    burst: int = 1
    aimd: bool = False
    start: float = 1.0  # AIMD: the first window (AUTOTHROTTLE_TARGET_CONCURRENCY)
    wmax: int = AIMD_CAP  # AIMD: the window's upper bound

    @property
    def gated(self) -> bool:
        return self.limit > 0 or self.delay > 0 or self.aimd

    def spacing(self, u: float) -> float:
        """This dispatch's spacing in seconds for a uniform draw ``u`` in [0, 1) (RANDOMIZE_DOWNLOAD_DELAY:
        0.5-1.5x, as Scrapy's slot)."""
        return self.delay * (0.5 + u) if self.randomize else self.delay


def _number(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PolitenessError(f"{key}: expected a number, got {type(value).__name__}")
    try:
        x = float(value)
    except ValueError:
        raise PolitenessError(f"{key}: expected a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise PolitenessError(f"{key}: {x} is outside [{lo:g}, {hi:g}]")
    return x


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip().lower() in ("0", "1", "true", "false"):
        return str(value).strip().lower() in ("1", "true")
    raise PolitenessError(f"{key}: expected true or false, got {str(value)[:40]!r}")


def _apply(base: DomainPolicy, values: dict[str, Any], where: str) -> DomainPolicy:
    p = base
    for key, value in values.items():
        if key not in DOMAIN_KEYS:
            raise PolitenessError(f"{where}: unknown key {str(key)[:60]!r} (one of {', '.join(sorted(DOMAIN_KEYS))})")
        if key == "CONCURRENT_REQUESTS_PER_DOMAIN":
            limit = int(_number(key, value, 1, _MAX_LIMIT))
            p = replace(p, limit=limit, wmax=limit)
        elif key == "DOWNLOAD_DELAY":
            p = replace(p, delay=_number(key, value, 0, _MAX_DELAY))
        elif key == "RANDOMIZE_DOWNLOAD_DELAY":
            p = replace(p, randomize=_flag(key, value))
        elif key == "FLEET_DOMAIN_BURST":
            p = replace(p, burst=int(_number(key, value, 1, 1000)))
        elif key == "AUTOTHROTTLE_ENABLED":
            p = replace(p, aimd=_flag(key, value))
        else:
            p = replace(p, start=_number(key, value, 1, _MAX_LIMIT))
    return p


class Politeness:
    """The policy of every domain of one spider: a base (its settings and its project's) and per-domain overrides.

    ``active`` is False when nothing is gated: the worker then builds no gate at all. ``ignored``: the
    IGNORED_KEYS the spider or its project's settings module set (the worker says so once);
    ``ignored_in``: where each was set, ``spider`` (custom_settings, a YAML spec) or ``project``."""

    def __init__(self, base: DomainPolicy, overrides: dict[str, DomainPolicy],
                 ignored: tuple[str, ...] = (), ignored_in: dict[str, str] | None = None) -> None:
        self.base = base
        self.overrides = overrides
        self.ignored = ignored
        self.ignored_in = ignored_in if ignored_in is not None else dict.fromkeys(ignored, "spider")
        self.active = base.gated or any(p.gated for p in overrides.values())
        self._cache: dict[str, DomainPolicy] = {}

    @classmethod
    def from_settings(cls, settings: Any, domain_settings: Any = None) -> Politeness:
        """From Scrapy ``settings`` (only values the project's settings module or the spider set: priority 25
        or above, the highest winning) and a ``domain_settings`` mapping (the spider attribute, over both);
        PolitenessError on anything unusable."""
        values: dict[str, Any] = {}
        # RANDOMIZE_DOWNLOAD_DELAY is Scrapy's default True: it only shapes a delay the user set
        values["RANDOMIZE_DOWNLOAD_DELAY"] = settings.getbool("RANDOMIZE_DOWNLOAD_DELAY", True)
        for key in ("CONCURRENT_REQUESTS_PER_DOMAIN", "DOWNLOAD_DELAY", "AUTOTHROTTLE_ENABLED",
                    "AUTOTHROTTLE_TARGET_CONCURRENCY", "FLEET_DOMAIN_BURST"):
            prio = settings.getpriority(key)
            if prio is not None and prio >= _PROJECT_PRIORITY:
                values[key] = settings.get(key)
        if settings.getbool("AUTOTHROTTLE_ENABLED") and "AUTOTHROTTLE_TARGET_CONCURRENCY" not in values:
            values["AUTOTHROTTLE_TARGET_CONCURRENCY"] = settings.getfloat("AUTOTHROTTLE_TARGET_CONCURRENCY", 1.0)
        base = _apply(DomainPolicy(), values, "settings")
        overrides: dict[str, DomainPolicy] = {}
        if domain_settings:
            if not isinstance(domain_settings, dict) or len(domain_settings) > 10_000:
                raise PolitenessError("domain_settings: expected a mapping of domain -> settings")
            for dom, vals in domain_settings.items():
                if not isinstance(dom, str) or not dom or len(dom) > 253 or not isinstance(vals, dict):
                    raise PolitenessError(f"domain_settings: {str(dom)[:60]!r}: expected a domain -> mapping")
                overrides[dom.strip().lower().rstrip(".")] = _apply(base, vals, f"domain_settings[{dom[:60]!r}]")
        # set by the spider or by the project's settings.py (not Scrapy's or Fleet's defaults): named once
        where = {k: "spider" if prio >= _SPIDER_PRIORITY else "project"
                 for k in IGNORED_KEYS if (prio := settings.getpriority(k) or 0) >= _PROJECT_PRIORITY}
        return cls(base, overrides, tuple(where), where)

    def for_domain(self, domain: str) -> DomainPolicy:
        """The policy of ``domain`` (a host): its own entry, else its closest parent's, else the base."""
        p = self._cache.get(domain)
        if p is None:
            p = self.base
            host = domain
            while host:
                if host in self.overrides:
                    p = self.overrides[host]
                    break
                host = host.partition(".")[2]
            if len(self._cache) >= 10_000:
                self._cache.clear()
            self._cache[domain] = p
        return p

"""The proxy pool, shared by the whole fleet through Redis.

Why fleet-wide: a proxy banned by one target is banned for every worker that uses it there, so health
is kept per (proxy, domain) in Redis, where every worker sees it. A ban cools the proxy for that
domain only (exponential, full jitter, base 60 s, cap 1 h); other domains keep using it.

Identity: a proxy's id is a short hash of its *full* URL, credentials included, so gateway proxies
that differ only by password are different proxies — and the id is all that is ever logged, stored
or shown. Credentials never leave this module except inside ``request.meta["proxy"]``.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.crc import key_slot

from scraper.queue import redisio
from scraper.queue import scripts as lua

__all__ = [
    "COOL_BASE",
    "COOL_CAP",
    "EWMA_ALPHA",
    "FAILURE_MS",
    "PROXY_KEY_PREFIX",
    "Health",
    "Proxy",
    "ProxyConfigError",
    "ProxyPool",
    "health_key",
    "parse_proxies",
    "proxy_id",
    "proxy_report",
]
PROXY_KEY_PREFIX = "fleet:proxies:"
COOL_BASE = 60.0
COOL_CAP = 3600.0
EWMA_ALPHA = 0.3
FAILURE_MS = 10_000.0  # the latency a fetch that got no answer through a proxy counts as (ProxyPool.failed)


class ProxyConfigError(ValueError):
    """FLEET_PROXIES could not be read; the message never includes credentials."""


def proxy_id(url: str) -> str:
    return "px-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class Proxy:
    url: str  # with credentials: never log this
    id: str

    def playwright(self) -> dict[str, str]:
        """The proxy as a browser context takes it (Playwright's ``proxy`` option): the browser
        answers the proxy's 407 challenge itself, so credentials never travel as a request header."""
        parts = urlsplit(self.url)
        out = {"server": self.display}
        if parts.username is not None:
            out["username"] = unquote(parts.username)
            out["password"] = unquote(parts.password or "")
        return out

    @property
    def display(self) -> str:
        """scheme://host:port with no credentials, for humans."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def parse_proxies(spec: str | None) -> list[Proxy]:
    """FLEET_PROXIES: a path to a file (one URL a line, # comments) or a comma list of URLs."""
    if not spec:
        return []
    if os.path.isfile(spec):
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # the path is configuration, the contents secrets
            what = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc.strerror})"
            raise ProxyConfigError(f"FLEET_PROXIES file {spec} {what}") from None
        entries = [ln.strip() for ln in text.splitlines()]
    elif "://" in spec:
        entries = [x.strip() for x in spec.split(",")]
    else:
        raise ProxyConfigError("FLEET_PROXIES must be a file of proxy URLs or a comma list of http(s)://host:port URLs")
    proxies: list[Proxy] = []
    seen: set[str] = set()
    for n, raw in enumerate(entries, 1):
        if not raw or raw.startswith("#"):
            continue
        try:
            parts = urlsplit(raw)  # raises on a malformed IPv6 host ("http://[::1")
            _ = parts.port  # raises on a non-numeric or out-of-range port
            ok = parts.scheme in {"http", "https"} and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ProxyConfigError(f"FLEET_PROXIES entry {n} is not an http(s)://[user:pass@]host:port URL")
        pid = proxy_id(raw)
        if pid not in seen:
            seen.add(pid)
            proxies.append(Proxy(raw, pid))
    return proxies


@dataclass
class Health:
    """One (proxy, domain) pair as every worker sees it."""

    successes: int = 0
    bans: int = 0
    consecutive: int = 0
    cooling_until: float = 0.0
    ewma_ms: float = 0.0

    def cooling(self, now: float) -> bool:
        return self.cooling_until > now

    @classmethod
    def from_redis(cls, raw: dict[Any, Any]) -> Health:
        def g(k: str) -> str | None:
            v = raw.get(k.encode()) if raw and isinstance(next(iter(raw)), bytes) else raw.get(k)
            return v.decode() if isinstance(v, bytes) else v

        if not raw:
            return cls()
        return cls(
            successes=int(g("successes") or 0),
            bans=int(g("bans") or 0),
            consecutive=int(g("consecutive") or 0),
            cooling_until=float(g("cooling_until") or 0.0),
            ewma_ms=float(g("ewma_ms") or 0.0),
        )


def health_key(pid: str, domain: str) -> str:
    return f"{PROXY_KEY_PREFIX}{pid}:{domain}"


@dataclass
class _DomainView:
    health: dict[str, Health] = field(default_factory=dict)
    loaded_at: float = 0.0


class ProxyPool:
    """Selection and health bookkeeping; Redis writes are batched by the caller's flush loop."""

    def __init__(
        self,
        proxies: Sequence[Proxy],
        client: aioredis.Redis | None = None,
        *,
        refresh: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.proxies = list(proxies)
        self.by_id = {p.id: p for p in self.proxies}
        self.client = client
        self.refresh = refresh
        self.rng = rng or random.Random()
        self.views: dict[str, _DomainView] = {}
        self.local_inflight: dict[str, int] = {}
        self._pending: dict[str, dict[str, float]] = {}  # key -> {successes: n, ewma_ms: v}
        # scraper/queue/lua/proxy_ban.lua and proxy_flush.lua
        self._ban = lua.Bound(client, "proxy_ban") if client is not None else None
        self._flush_script = lua.Bound(client, "proxy_flush") if client is not None else None

    def __bool__(self) -> bool:
        return bool(self.proxies)

    def view(self, domain: str) -> _DomainView:
        v = self.views.get(domain)
        if v is None:
            v = self.views[domain] = _DomainView()
        return v

    def stale(self, domain: str) -> bool:
        return time.monotonic() - self.view(domain).loaded_at > self.refresh

    async def load(self, domain: str) -> None:
        if self.client is None:
            return
        pipe = self.client.pipeline(transaction=False)
        for p in self.proxies:
            pipe.hgetall(health_key(p.id, domain))
        rows = await pipe.execute()
        v = self.view(domain)
        for p, raw in zip(self.proxies, rows, strict=True):
            h = Health.from_redis(raw)
            local = v.health.get(p.id)
            if local is not None and local.ewma_ms and not h.ewma_ms:
                h.ewma_ms = local.ewma_ms
            v.health[p.id] = h
        v.loaded_at = time.monotonic()

    def choose(self, domain: str, exclude: Iterable[str] = ()) -> tuple[Proxy | None, float]:
        """A healthy proxy for ``domain`` (power of two choices on latency × local load), or
        (None, earliest recovery time) when every proxy is cooling down for it."""
        now = time.time()
        v = self.view(domain)
        healthy = [p for p in self.proxies if not v.health.get(p.id, Health()).cooling(now)]
        if not healthy:
            until = min((v.health.get(p.id, Health()).cooling_until for p in self.proxies), default=now)
            return None, until
        excluded = set(exclude)
        fresh = [p for p in healthy if p.id not in excluded] or healthy
        if len(fresh) == 1:
            return fresh[0], now
        a, b = self.rng.sample(fresh, 2)
        return (a if self._cost(a, v) <= self._cost(b, v) else b), now

    def alternative(self, domain: str, current: str) -> Proxy | None:
        """Another healthy proxy than ``current`` for ``domain`` (the cheapest by the same cost as
        :meth:`choose`), for a hedged fetch (scraper.worker.hedge); None when there is none."""
        now = time.time()
        v = self.view(domain)
        others = [p for p in self.proxies if p.id != current and not v.health.get(p.id, Health()).cooling(now)]
        return min(others, key=lambda p: self._cost(p, v)) if others else None

    def _cost(self, p: Proxy, v: _DomainView) -> float:
        h = v.health.get(p.id, Health())
        latency = h.ewma_ms or 1.0  # untried proxies are tried first: optimism finds fast ones
        return latency * (1 + self.local_inflight.get(p.id, 0))

    def started(self, pid: str) -> None:
        self.local_inflight[pid] = self.local_inflight.get(pid, 0) + 1

    def finished(self, pid: str) -> None:
        self.local_inflight[pid] = max(0, self.local_inflight.get(pid, 0) - 1)

    def success(self, pid: str, domain: str, latency_ms: float) -> None:
        h = self.view(domain).health.setdefault(pid, Health())
        h.successes += 1
        h.consecutive = 0
        h.ewma_ms = latency_ms if not h.ewma_ms else (1 - EWMA_ALPHA) * h.ewma_ms + EWMA_ALPHA * latency_ms
        pend = self._pending.setdefault(health_key(pid, domain), {"successes": 0.0, "ewma_ms": 0.0, "at": 0.0})
        pend["successes"] += 1
        pend["ewma_ms"] = h.ewma_ms
        pend["at"] = time.time()

    def failed(self, pid: str, domain: str, timeout_ms: float = 0.0) -> None:
        """A fetch through ``pid`` got no answer (reset, closed, timed out, garbage): counted as a very slow
        answer (FAILURE_MS) in its latency, fleet-wide at the next flush. Why: a proxy that accepts connections
        and never answers had no latency at all, so it stayed "untried" (cost 1.0) and beat every working one
        in :meth:`choose`; no ban either, since the target itself may be what fails (every proxy then costs
        alike, and the requests go to the DLQ on their A budget as before). ``timeout_ms``: the request's download
        timeout; no answer counts as at least that slow, so it stays dearer than proxies slower than FAILURE_MS."""
        h = self.view(domain).health.setdefault(pid, Health())
        sample = max(FAILURE_MS, timeout_ms)
        h.ewma_ms = sample if not h.ewma_ms else (1 - EWMA_ALPHA) * h.ewma_ms + EWMA_ALPHA * sample
        pend = self._pending.setdefault(health_key(pid, domain), {"successes": 0.0, "ewma_ms": 0.0, "at": 0.0})
        pend["ewma_ms"] = h.ewma_ms  # "at" stays the last success's: a failure resets no ban escalation

    async def ban(self, pid: str, domain: str) -> float:
        """Mark (proxy, domain) bad now — fleet-wide — and return its cooling-until time."""
        now = time.time()
        h = self.view(domain).health.setdefault(pid, Health())
        h.bans += 1
        if h.cooling(now) and self._ban is None:
            return h.cooling_until
        h.consecutive += 1
        ceiling = min(COOL_CAP, COOL_BASE * (2 ** (h.consecutive - 1)))
        h.cooling_until = now + ceiling * self.rng.random()
        if self._ban is not None:
            res = await self._ban([health_key(pid, domain)], [repr(now), COOL_BASE, COOL_CAP, repr(self.rng.random())])
            h.cooling_until = float(res.decode() if isinstance(res, bytes) else res)
        return h.cooling_until

    async def flush(self) -> None:
        """Write batched success counts and latencies in one round trip."""
        if not self._pending or self.client is None:
            return
        pending, self._pending = self._pending, {}
        # health keys carry no hash tag: on a cluster, one PROXY_FLUSH call per slot (lua/proxy_flush.lua)
        by_slot: dict[int, tuple[list[str], list[Any]]] = {}
        cluster = redisio.is_cluster(self.client)
        for key, vals in pending.items():
            keys, args = by_slot.setdefault(key_slot(key.encode()) if cluster else 0, ([], []))
            keys.append(key)
            args += [int(vals["successes"]), round(vals["ewma_ms"], 1), repr(vals["at"])]
        for keys, args in by_slot.values():
            await self._flush_script(keys, args)  # type: ignore[misc]


async def proxy_report(client: aioredis.Redis, proxies: Sequence[Proxy]) -> list[dict[str, Any]]:
    """Per proxy: state per domain, cooling-until, successes, bans, latency (for `fleet proxies`)."""
    now = time.time()
    out: list[dict[str, Any]] = []
    for p in proxies:
        domains: dict[str, Any] = {}
        async for key in client.scan_iter(match=f"{PROXY_KEY_PREFIX}{p.id}:*", count=500):
            k = key.decode() if isinstance(key, bytes) else key
            domain = k[len(PROXY_KEY_PREFIX) + len(p.id) + 1 :]
            h = Health.from_redis(await client.hgetall(k))
            domains[domain] = {
                "state": "cooling" if h.cooling(now) else "healthy",
                "cooling_until": h.cooling_until or None,
                "successes": h.successes,
                "bans": h.bans,
                "consecutive_bans": h.consecutive,
                "latency_ms": round(h.ewma_ms, 1) if h.ewma_ms else None,
            }
        out.append({"id": p.id, "proxy": p.display, "domains": domains})
    return out

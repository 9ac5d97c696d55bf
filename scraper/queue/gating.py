"""The politeness gate's Redis side: permits per domain (GATE), their release and renewal with the
AIMD feedback (UNGATE), the workers' waiting counts, and the per-domain view `fleet domains` prints.

A mixin of :class:`scraper.queue.client.FleetQueue`, kept apart because only a spider with a politeness
setting (scraper.policy.politeness) ever calls it: a spider without one never touches these keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from scraper.queue import scripts as lua
from scraper.queue.keys import Keys
from scraper.queue.seedwire import text

__all__ = ["WAITING_FRESH", "GateReply", "Gating"]

#: Seconds a worker's reported waiting counts stay valid (it reports every heartbeat, ~FLEET_LEASE_SECONDS/3).
WAITING_FRESH = 30.0


@dataclass(frozen=True, slots=True)
class GateReply:
    granted: int  # the first `granted` ids asked for hold a permit
    retry_ms: int  # when to ask again for the others (0: none left)
    inflight: int
    limit: int  # the effective in-flight limit (0: none)
    window: float | None  # the AIMD window (None: no AIMD)
    waits: tuple[int, ...] = ()  # per granted id: ms to hold it before fetching (a slot reserved ahead)


class Gating:
    """GATE / UNGATE calls and the gate's read-only view."""

    client: aioredis.Redis
    keys: Keys
    _gate: lua.Bound
    _ungate: lua.Bound

    async def gate(self, domain: str, ids: Sequence[str], *, limit: int, spacing: float, burst: int,
                   aimd: bool, start: float, wmax: int, ttl: float, ahead: float = 0.0) -> GateReply:
        """Ask for one permit per id (in order) to fetch from ``domain`` (lua/gate.lua); a spaced slot
        may be reserved up to ``ahead`` seconds before it is due."""
        keys = self.keys.select(self._gate.meta.keys, domain=domain)
        args: list[Any] = [domain, limit, repr(spacing), burst, "1" if aimd else "0", repr(start), wmax,
                           repr(ttl), repr(ahead), *ids]
        granted, retry, inflight, eff, win, *waits = await self._gate(keys, args)
        w = text(win)
        return GateReply(int(granted), int(retry), int(inflight), int(eff), float(w) if w else None,
                         tuple(int(x) for x in waits))

    async def ungate(self, entries: Sequence[tuple[str, str, int, str]], ttl: float) -> int:
        """Release or renew permits: (domain, lease id, latency ms, outcome) each (lua/ungate.lua)."""
        if not entries:
            return 0
        keys: list[str] = []
        args: list[Any] = [repr(ttl)]
        for domain, lid, ms, outcome in entries:
            keys += (self.keys.permits(domain), self.keys.gstate(domain))
            args += (lid, ms, outcome)
        return int(await self._ungate(keys, args))

    async def report_waiting(self, worker: str, counts: dict[str, int]) -> None:
        """This worker's requests waiting at its gate, per domain (none: its field goes)."""
        if counts:
            await self.client.hset(self.keys.gwait, worker, json.dumps({"t": time.time(), "d": counts}))
        else:
            await self.client.hdel(self.keys.gwait, worker)

    async def domains(self) -> list[dict[str, Any]]:
        """Every domain the gate has seen: in flight, limit, AIMD window, spacing, recent rate, waiting."""
        now = time.time()
        waiting: dict[str, int] = {}
        for raw in (await self.client.hgetall(self.keys.gwait)).values():
            try:
                doc = json.loads(text(raw))
                if now - float(doc["t"]) <= WAITING_FRESH:
                    for d, n in doc["d"].items():
                        waiting[str(d)] = waiting.get(str(d), 0) + int(n)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # hostile or old: not counted
        out: list[dict[str, Any]] = []
        for d in sorted(text(x) for x in await self.client.smembers(self.keys.gdoms)):
            st = {text(a): text(b) for a, b in (await self.client.hgetall(self.keys.gstate(d))).items()}
            if not st:
                continue
            inflight = int(await self.client.zcount(self.keys.permits(d), now, "+inf"))
            aimd = st.get("aimd") == "1"
            rate = float(st.get("rate", 0) or 0)
            rw = float(st.get("rw", now) or now)
            if now - rw < 60 and now - float(st.get("at", 0) or 0) > 10:
                rate = 0.0  # nothing dispatched for a while
            limit = int(float(st.get("limit", 0) or 0))
            window = round(float(st["win"]), 2) if aimd and st.get("win") else None
            out.append({
                "domain": d,
                "inflight": inflight,
                "limit": limit or None,
                "window": window,
                "spacing_s": round(float(st.get("spacing", 0) or 0), 3),
                "rate": round(rate, 2),
                "waiting": waiting.get(d, 0),
                "latency_ms": round(float(st["lat"]), 1) if st.get("lat") else None,
            })
        return out

"""The politeness gate's Redis side: permits per domain (GATE), their release and renewal with the
AIMD feedback (UNGATE), the workers' waiting counts, and the per-domain view `fleet domains` prints.

A mixin of :class:`scraper.queue.client.FleetQueue`, kept apart because only a spider with a politeness
setting (scraper.policy.politeness) ever calls it: a spider without one never touches these keys.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from scraper.queue import scripts as lua
from scraper.queue.keys import Keys
from scraper.queue.seedwire import text

__all__ = ["DOMAIN_TTL", "WAITING_FRESH", "WAITING_STALE", "GateReply", "Gating"]

#: Seconds a worker's reported waiting counts stay valid (it reports every heartbeat, ~FLEET_LEASE_SECONDS/3).
WAITING_FRESH = 30.0
#: A report older than this is a dead worker's (a live one reports every heartbeat or deletes its field):
#: deleted by `domains` and, at most this often per process, by `report_waiting`.
WAITING_STALE = 10 * WAITING_FRESH
#: Seconds a domain's gate state lives after its last GATE (lua/gate.lua STATE_TTL): its time in the index.
DOMAIN_TTL = 86400
#: Members of the old `gdoms` SET moved into `gdz` per round trip.
_ADOPT_BATCH = 500


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
    _waiting_swept: float | None = None  # time.monotonic() of this process's last sweep of `gwait`

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
        """This worker's requests waiting at its gate, per domain (none: its field goes). At most once per
        WAITING_STALE seconds, the fields of workers that died without deleting theirs go too."""
        if counts:
            await self.client.hset(self.keys.gwait, worker, json.dumps({"t": time.time(), "d": counts}))
        else:
            await self.client.hdel(self.keys.gwait, worker)
        mono = time.monotonic()
        if self._waiting_swept is None or mono - self._waiting_swept >= WAITING_STALE:
            self._waiting_swept = mono
            await self._waiting()

    async def _waiting(self) -> dict[str, int]:
        """The fresh reports summed per domain; the stale ones (older than WAITING_STALE) deleted. A field that
        is not a report (hostile, or of another format) is neither counted nor deleted."""
        now = time.time()
        waiting: dict[str, int] = {}
        stale: list[Any] = []  # field names as stored (bytes)
        for field, raw in (await self.client.hgetall(self.keys.gwait)).items():
            try:
                doc = json.loads(text(raw))
                age = now - float(doc["t"])
                if age > WAITING_STALE:
                    stale.append(field)
                elif age <= WAITING_FRESH:
                    for d, n in doc["d"].items():
                        waiting[str(d)] = waiting.get(str(d), 0) + int(n)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # hostile or old: not counted
        if stale:
            # a worker that reports between the read and this HDEL (after WAITING_STALE of silence) loses
            # that one report until its next heartbeat: no lock for a count that is advisory
            await self.client.hdel(self.keys.gwait, *stale)
        return waiting

    async def _adopt_gdoms(self) -> None:
        """Move the live members of the SET `gdoms` (what GATE of versions before `gdz` writes, also while
        old and new workers share Redis in a rolling upgrade) into `gdz`, scored by their state's last GATE
        (`at`); a member whose state expired is dropped. Each batch read is removed with SREM, not DEL, so a
        member an old worker adds meanwhile stays for the next call."""
        if not await self.client.exists(self.keys.gdoms):
            return
        cursor: int = 0
        while True:
            cursor, batch = await self.client.sscan(self.keys.gdoms, cursor, count=_ADOPT_BATCH)
            names = sorted({text(x) for x in batch})
            if names:
                pipe = self.client.pipeline(transaction=False)
                for d in names:
                    pipe.hget(self.keys.gstate(d), "at")
                live: dict[str, float] = {}
                for d, at in zip(names, await pipe.execute(), strict=True):
                    with contextlib.suppress(TypeError, ValueError):  # no state (expired), or not a time
                        live[d] = float(text(at))
                if live:
                    await self.client.zadd(self.keys.gdz, live, gt=True)  # never older than a new GATE's
                    await self.client.expire(self.keys.gdz, DOMAIN_TTL)  # as GATE does: from now
                await self.client.srem(self.keys.gdoms, *names)
            if not cursor:
                return

    async def gated_domains(self) -> list[str]:
        """The domains gated within DOMAIN_TTL (the state of one may have expired a moment ago), sorted;
        the old `gdoms` SET adopted first."""
        await self._adopt_gdoms()
        since = time.time() - DOMAIN_TTL
        return sorted(text(x) for x in await self.client.zrangebyscore(self.keys.gdz, since, "+inf"))

    async def gated_count(self) -> int:
        """How many domains `gated_domains` lists (`fleet status`), without reading them."""
        await self._adopt_gdoms()
        return int(await self.client.zcount(self.keys.gdz, time.time() - DOMAIN_TTL, "+inf"))

    async def domains(self) -> list[dict[str, Any]]:
        """Every domain the gate has seen: in flight, limit, AIMD window, spacing, recent rate, waiting."""
        waiting = await self._waiting()
        now = time.time()
        out: list[dict[str, Any]] = []
        for d in await self.gated_domains():
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

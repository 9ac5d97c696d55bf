"""Reading a spider's queue without changing it: counts, pending work, runs, breakers, parked backlog,
the DLQ. A mixin of :class:`scraper.queue.client.FleetQueue` (the commands, the dashboards and the
metrics exporter read through it); kept apart because none of it is on a worker's hot path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis

from scraper.queue import scripts as lua
from scraper.queue.keys import LEASED, Keys, stored_shards
from scraper.queue.seedwire import text

__all__ = ["Inspection"]

class Inspection:
    """The read-only half of FleetQueue."""

    client: aioredis.Redis
    keys: Keys
    parts: list[Any]
    _has: lua.Bound

    async def breakers(self) -> dict[str, dict[str, Any]]:
        """Every breaker of this spider with its state, counts and parked backlog."""
        out: dict[str, dict[str, Any]] = {}
        pattern = f"{self.keys.prefix}breaker:*"
        async for key in self.client.scan_iter(match=pattern, count=500):
            k = text(key)
            domain = k[len(self.keys.prefix) + len("breaker:") :]
            raw = {text(a): text(b) for a, b in (await self.client.hgetall(k)).items()}
            window = raw.get("window", "")
            c = window.count("C")
            state = raw.get("state", "closed")
            out[domain] = {
                "state": state,
                "window": len(window),
                "c_events": c,
                "c_rate": round(c / len(window), 3) if window else 0.0,
                "trips": int(raw.get("trips", 0) or 0),
                "drift_events": int(raw.get("drift_events", 0) or 0),
                "opened_at": float(raw["opened_at"]) if raw.get("opened_at") and state != "closed" else None,
                "open_until": float(raw["open_until"]) if raw.get("open_until") and state != "closed" else None,
                "parked": int(await self.client.zcard(f"{self.keys.prefix}parked:{domain}")),
                "samples": json.loads(raw.get("samples") or "[]"),
            }
        return out

    async def breaker_counts(self) -> dict[str, int]:
        """How many breakers are open and half-open: one HGETALL of the not-closed ones (the Lua
        scripts keep them in ``brk``), however many domains ever had a breaker record."""
        out = {"open": 0, "half_open": 0}
        for v in (await self.breaker_states()).values():
            state = v.split("|", 1)[0]
            if state == "open":
                out["open"] += 1
            elif state == "half":
                out["half_open"] += 1
        return out

    async def parked(self) -> int:
        domains = [text(d) for d in await self.client.smembers(self.keys.prefix + "parkdom")]
        total = 0
        for d in domains:
            total += int(await self.client.zcard(f"{self.keys.prefix}parked:{d}"))
        return total

    # -- inspection -------------------------------------------------------------------------------

    async def has_member(self, key: str, fps: Sequence[str]) -> list[bool]:
        res = await self._has([key], fps)
        return [bool(int(x)) for x in res]

    async def seen(self, run: str, fps: Sequence[str]) -> list[bool]:
        """Whether each fingerprint is in the run's SEEN (the worker asks before it follows a redirect)."""
        return await self.has_member(self.keys.seen(run), fps)

    async def counts(self) -> dict[str, int]:
        pipe = self._sizes()
        pipe.xlen(self.keys.dlq)
        ready, inflight, delayed, dlq = await pipe.execute()
        return {
            "ready": int(ready),
            "inflight": int(inflight),
            "delayed": int(delayed),
            "dlq": int(dlq),
            "parked": await self.parked(),
        }

    async def waiting_workers(self, since: float) -> set[str]:
        """Workers listed in WAITING (their last lease found READY empty) whose listing runs past ``since``
        (a Unix time): idle workers re-list every 0.6 s at most, for 2-3 s (lua/lease.lua)."""
        return {text(w) for w in await self.client.zrangebyscore(self.keys.waiting, since, "+inf")}

    async def shards_changed(self) -> str | None:
        """One line when the spider's recorded shard count (``Keys.shards``) is no longer this queue's: a
        worker must stop then, or it would route work to shards no other process uses (scraper.queue.shards)."""
        have, mine = await stored_shards(self.client, self.keys.spider), len(self.parts)
        if have == mine:
            return None
        return (f"spider {self.keys.spider!r} now has its queue in {have} shard(s), this worker in {mine} "
                f"(FLEET_QUEUE_SHARDS changed while it ran): stopping; restart it with FLEET_QUEUE_SHARDS={have}")

    async def unwait(self, worker: str) -> None:
        """Take ``worker`` off WAITING (the one write here): it stopped, and waits for no work, so a change
        of FLEET_QUEUE_SHARDS, refused while workers wait (shards.open_queue), need not wait out its listing."""
        await self.client.zrem(self.keys.waiting, worker)

    async def pending(self) -> int:
        """READY + IN-FLIGHT + DELAYED: the work that keeps ``--until-idle`` workers alive.

        Polled by every idle worker, so one round trip and no PARKED scan (parked work never counts)."""
        return sum(int(x) for x in await self._sizes().execute())

    def _sizes(self) -> Any:
        """A pipeline asking READY's, IN-FLIGHT's and DELAYED's sizes: IN-FLIGHT's leases only, not
        LEASE's encoding mark (keys.LEASED)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.ready)
        pipe.zcount(self.keys.inflight, *LEASED)
        pipe.zcard(self.keys.delayed)
        return pipe

    async def runs(self) -> dict[str, dict[str, int]]:
        """Each run's SEEN and DONE counts (runs whose sets expired are left out)."""
        return await self.run_counts([text(r) for r in await self.client.zrange(self.keys.runs, 0, -1)])

    async def run_counts(self, runs: Sequence[str]) -> dict[str, dict[str, int]]:
        """SEEN and DONE counts of ``runs`` (a run without either is left out)."""
        if not runs:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for r in runs:
            pipe.hget(self.keys.seen(r), "count")
            pipe.hget(self.keys.done(r), "count")
        res = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        for i, r in enumerate(runs):
            seen, done = res[2 * i], res[2 * i + 1]
            if seen is None and done is None:
                continue  # expired (TTL) run
            out[r] = {"seen": int(seen or 0), "done": int(done or 0)}
        return out

    async def dlq_iter(self, run: str | None = None) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """DLQ entries newest first (all, or one run's), paged so a long stream never loads at once."""
        last = "+"
        while True:
            rows: Any = await self.client.xrevrange(self.keys.dlq, max=last, count=500)
            for rid, fields in rows or []:
                f = {text(k): text(v) for k, v in (fields or {}).items()}
                if run is None or f.get("run") == run:
                    yield text(rid), f
            if not rows or len(rows) < 500:
                return
            last = "(" + text(rows[-1][0])

    async def run_backlog(self, run: str) -> dict[str, int] | None:
        """``runstate.run_backlog`` of this queue: the run's ready/inflight/delayed/parked, or None when too
        large to read."""
        from scraper.queue.runstate import run_backlog

        return await run_backlog(self.client, self.keys, run)

    async def dlq_delete(self, ids: Sequence[str]) -> int:
        """Delete DLQ entries by the ids ``dlq_iter`` gave."""
        return int(await self.client.xdel(self.keys.dlq, *ids)) if ids else 0

    async def run_times(self) -> dict[str, float]:
        """Every run this spider's queue has seen -> when it was first seeded (unix time)."""
        rows: Any = await self.client.zrange(self.keys.runs, 0, -1, withscores=True)
        return {text(r): float(t) for r, t in rows}

    async def first_seen(self, run: str) -> float | None:
        """When ``run`` was first seeded, or None for a run this spider's queue never had."""
        t = await self.client.zscore(self.keys.runs, run)
        return None if t is None else float(t)

    async def breaker_states(self) -> dict[str, str]:
        """The breakers that are not closed: domain -> ``open|<until>`` or ``half|<until>`` (``brk``)."""
        return {text(a): text(b) for a, b in (await self.client.hgetall(self.keys.brk)).items()}

    async def dlq_entries(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = []
        async for entry in self.dlq_iter():
            out.append(entry)
            if len(out) >= count:
                break
        return out


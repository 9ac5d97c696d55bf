"""Names in Redis: the key layout of a spider's queue (``Keys``), spider names, queue ids.

Every key of a spider shares one hash tag ``{spider}``, so each script's keys live in one slot.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import redis.asyncio as aioredis

from scraper.queue.names import is_name

__all__ = ["SPIDERS_KEY", "Keys", "QueueError", "check_spider_name", "known_spiders", "new_id"]

SPIDERS_KEY = "fleet:spiders"


class QueueError(RuntimeError):
    """A queue operation could not be carried out; the message says why."""


def check_spider_name(name: str) -> str:
    if not is_name(name):
        raise QueueError(f"spider name {name!r} cannot be used as a queue name: use letters, digits, '_', '-' or '.'")
    return name


def new_id() -> str:
    return secrets.token_hex(8)


class Keys:
    """Key names of one spider; all share the ``{spider}`` hash tag (one Redis Cluster slot)."""

    def __init__(self, spider: str) -> None:
        self.spider = check_spider_name(spider)
        self.prefix = f"fleet:{{{spider}}}:"
        self.ready = self.prefix + "ready"
        self.inflight = self.prefix + "inflight"
        self.delayed = self.prefix + "delayed"
        self.env = self.prefix + "env"
        self.lease = self.prefix + "lease"
        self.dlv = self.prefix + "dlv"
        self.dlq = self.prefix + "dlq"
        self.runs = self.prefix + "runs"
        self.waiting = self.prefix + "waiting"  # workers whose last lease found nothing (lua/_helpers.lua: wake)
        self.wake = self.prefix + "wake"  # pub/sub channels wake:<worker>: work reached READY while it waits
        self.seq = self.prefix + "seq"  # READY's tie-breaker counter (newest first within a priority)
        self.hold = self.prefix + "hold"  # per-domain backoff deadlines (HOLD)
        self.brk = self.prefix + "brk"  # the breakers that are not closed: domain -> state|until
        self.parkdom = self.prefix + "parkdom"  # domains with parked requests
        self.stage = self.prefix + "stage"  # scrapy-redis start feeders: worker -> deadline|run (startkeys)
        self.cancelled = self.prefix + "cancelled"  # runs `fleet cancel` stopped: run -> when (scraper/queue/cancel.py)
        self.gdz = self.prefix + "gdz"  # gated domains -> their last GATE time (GATE prunes; `fleet domains`)
        self.gdoms = self.prefix + "gdoms"  # the SET gdz replaced: only read (and emptied) by scraper/queue/gating.py
        self.gwait = self.prefix + "gwait"  # worker -> its gate's waiting counts per domain (JSON, with a time)

    def seen(self, run: str) -> str:
        return f"{self.prefix}seen:{run}"

    def done(self, run: str) -> str:
        return f"{self.prefix}done:{run}"

    def wake_channel(self, worker: str) -> str:
        """The pub/sub channel on which ``worker`` is told of new work while it waits (lua/_helpers.lua: wake)."""
        return f"{self.wake}:{worker}"

    def tally(self, run: str) -> str:
        """Per-run counts the workers flush in batches (scraper.worker.tally): items, coverage, schema."""
        return f"{self.prefix}tally:{run}"

    def staging(self, worker: str) -> str:
        """A worker's staging list of start-key entries being converted (scraper.queue.startkeys)."""
        return f"{self.prefix}stage:{worker}"

    def breaker(self, domain: str) -> str:
        return f"{self.prefix}breaker:{domain}"

    def parked(self, domain: str) -> str:
        return f"{self.prefix}parked:{domain}"

    def permits(self, domain: str) -> str:
        """The domain's gate permits: lease id -> expiry (GATE, UNGATE)."""
        return f"{self.prefix}gp:{domain}"

    def gstate(self, domain: str) -> str:
        """The domain's gate state: GCRA's theoretical arrival time, the AIMD window, latencies, rate."""
        return f"{self.prefix}gd:{domain}"

    def select(self, names: Iterable[str], *, run: str | None = None, domain: str | None = None) -> list[str]:
        """The keys a script's header names (lua.ScriptMeta.keys), in its order: the call site derives
        its KEYS from the header, so names and order cannot drift apart."""
        out: list[str] = []
        for n in names:
            if n in ("seen", "done"):
                if run is None:
                    raise QueueError(f"key {n!r} needs a run")
                out.append(self.seen(run) if n == "seen" else self.done(run))
            elif n in ("breaker", "parked", "permits", "gstate"):
                if domain is None:
                    raise QueueError(f"key {n!r} needs a domain")
                out.append(getattr(self, n)(domain))
            else:
                out.append(getattr(self, n))
        return out




async def known_spiders(client: aioredis.Redis) -> list[str]:
    """The spiders ever seeded; a member that is not a valid spider name (written by something else) is
    left out rather than failing every command that lists spiders."""
    members = [
        s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in await client.smembers(SPIDERS_KEY)
    ]
    return sorted(m for m in members if is_name(m))

"""Names in Redis: the key layout of a spider's queue (``Keys``), spider names, queue ids, shards.

Every key of a spider's queue shard shares one hash tag, so each script's keys live in one slot: ``{spider}``
for shard 0 (the only one by default), a tag of its own for each further shard (``shard_tag``).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from scraper.queue.names import is_name

__all__ = [
    "LEASED",
    "MAX_SHARDS",
    "SPIDERS_KEY",
    "Keys",
    "QueueError",
    "check_spider_name",
    "known_spiders",
    "new_id",
    "shard_count",
    "shard_of",
    "shard_tag",
    "stored_shards",
]

MAX_SHARDS = 64

SPIDERS_KEY = "fleet:spiders"

#: ZCOUNT's range of IN-FLIGHT's leases: every member but LEASE's encoding mark, at +inf (lua/_helpers.lua:
#: big_encoding); a ZCARD would count the mark
LEASED = ("-inf", "(+inf")


class QueueError(RuntimeError):
    """A queue operation could not be carried out; the message says why."""


def check_spider_name(name: str) -> str:
    if not is_name(name):
        raise QueueError(f"spider name {name!r} cannot be used as a queue name: use letters, digits, '_', '-' or '.'")
    return name


def new_id(fp: str = "") -> str:
    """A fresh queue entry id: 16 hex chars, random but for the last 4, which are the fingerprint's.

    Why: a spider split into shards (FLEET_QUEUE_SHARDS) keeps an entry in the shard of its
    fingerprint (``shard_of``), and every call after the lease names only the id; an id that ends like
    its fingerprint is routed without a lookup, whatever the number of shards."""
    return secrets.token_hex(6) + fp[-4:] if len(fp) == 16 else secrets.token_hex(8)


def shard_of(key: str, shards: int) -> int:
    """The shard of a fingerprint or of an entry id (``new_id``): its last 16 bits modulo ``shards``.

    The last bits, because SEEN/DONE buckets are chosen by the first 12 (lua/_helpers.lua): each shard
    then holds a share of every bucket rather than whole buckets."""
    if shards <= 1:
        return 0
    try:
        return int(key[-4:], 16) % shards
    except ValueError:
        return 0  # not hex: not an id Fleet made (ShardedQueue routes an entry by where it was leased from)


@functools.lru_cache(maxsize=4096)
def shard_tag(spider: str, shard: int, shards: int) -> str:
    """The hash tag of a spider's ``shard`` out of ``shards``: ``spider`` for shard 0, and for shard i > 0
    ``spider/i`` (or ``spider/i.k`` for the smallest k that works) whose cluster slot falls in the i-th
    of the ``shards`` equal slot ranges not holding shard 0's slot.

    Why spread over the slot space: a Redis Cluster of P primaries made by ``redis-cli --cluster create``
    gives each primary one contiguous P-th of the slots, so with ``shards`` = P each shard lands on a
    primary of its own; a plain hash of ``spider/i`` puts two of three on one primary a third of the
    time. '/' is not allowed in a spider name, so no tag is another spider's."""
    if shard == 0:
        return spider
    if not 0 < shard < shards <= MAX_SHARDS:
        raise QueueError(f"shard {shard} of {shards}: shards are 0 to {shards - 1}, at most {MAX_SHARDS}")
    home = key_slot(spider.encode()) * shards // REDIS_CLUSTER_HASH_SLOTS
    ranges = [r for r in range(shards) if r != home]
    want = ranges[shard - 1]
    for k in range(100_000):
        tag = f"{spider}/{shard}" + (f".{k}" if k else "")
        if key_slot(tag.encode()) * shards // REDIS_CLUSTER_HASH_SLOTS == want:
            return tag
    raise QueueError(f"no hash tag found for shard {shard} of {spider!r}")  # pragma: no cover (CRC16 spreads)


class Keys:
    """Key names of one spider's queue shard; all share one hash tag (one Redis Cluster slot).

    Shard 0 (the default, and the whole queue of an unsharded spider) is ``fleet:{spider}:``; it also
    holds what is the spider's alone, whatever its shards: tallies, start-key staging, the gate, and
    the shard count itself (``shards``)."""

    def __init__(self, spider: str, shard: int = 0, shards: int = 1) -> None:
        self.spider = check_spider_name(spider)
        self.shard = shard
        self.prefix = f"fleet:{{{shard_tag(spider, shard, shards)}}}:"
        self.shards = self.prefix + "shards"  # shard 0: how many shards the spider's queue has (scraper.queue.shards)
        self.shardsets = self.prefix + "shardsets"  # shard 0: every count it had (reads see their shards too)
        self.ready = self.prefix + "ready"
        self.inflight = self.prefix + "inflight"
        self.delayed = self.prefix + "delayed"
        self.env = self.prefix + "env"
        self.lease = self.prefix + "lease"
        self.dlv = self.prefix + "dlv"
        self.lsweep = self.prefix + "lsweep"  # MAINTAIN's cursor over LEASE (lua/_helpers.lua: lease_sweep)
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
        # shard 0: the object store the spider's processes write to, and each run's (scraper.queue.storebind)
        self.store = self.prefix + "store"
        self.runstores = self.prefix + "runstores"

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




def shard_count(raw: bytes | str | None) -> int:
    """The shard count a ``Keys.shards`` value records: 1 when absent or not a count Fleet would write."""
    t = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw or "")
    n = int(t) if t.isdigit() else 1
    return n if 1 <= n <= MAX_SHARDS else 1


async def stored_shards(client: aioredis.Redis, spider: str) -> int:
    """How many shards ``spider``'s queue has in Redis (1 when never set; scraper.queue.shards)."""
    return shard_count(await client.get(Keys(spider).shards))


async def known_spiders(client: aioredis.Redis) -> list[str]:
    """The spiders ever seeded; a member that is not a valid spider name (written by something else) is
    left out rather than failing every command that lists spiders."""
    members = [
        s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in await client.smembers(SPIDERS_KEY)
    ]
    return sorted(m for m in members if is_name(m))

"""Per-run tallies of what a worker wrote (items, objects, field coverage, schema), flushed in batches.

Why in the worker and batched: the run manifest (scraper.cli.manifests) reports field coverage and a
schema, which only the process that holds the items can see; sending them to Redis per page would add a
round trip per page (the bench counts them). So each worker adds up its own counts in memory and the
keeper sends them every :data:`FLUSH_EVERY` seconds, and once more at close, as HINCRBYs into one hash
per run (``fleet:{spider}:tally:RUN``, one MULTI per flush, expiring with SEEN/DONE). A worker killed
between two flushes loses at most that interval's counts: coverage, schema, items and objects in a
manifest may under-count slightly (done / DLQ / parked come from the queue itself and are exact).

Counted when an object is durable, so a request redelivered after its write (its DONE lost with a dead
worker) is counted twice: "items" counts records written, an export's rows are per idempotency key.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from itemadapter import is_item

from scraper.store.objects import item_to_dict, key_values, no_surrogates

__all__ = ["FLUSH_EVERY", "MAX_FIELDS", "RunTally", "json_type"]

FLUSH_EVERY = 2.0  # seconds between flushes: at most one Redis call per worker per interval
MAX_FIELDS = 200  # distinct field names tracked per run and worker; beyond, counted as fields_dropped
_MAX_NAME = 100  # a longer field name is not tracked (hostile pages yield what they like)


def json_type(value: Any) -> str:
    """The JSON type of a value as a schema states it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "array"  # a set is written as a (sorted) list, as Scrapy's feed exports write it
    if isinstance(value, dict) or is_item(value):
        return "object"  # a nested Item, dataclass or attrs item is written as an object
    return "string"  # written as text (datetime, Decimal, bytes...: scraper.store.objects.json_default)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {} or value == ()


class RunTally:
    """Counters per run: ``items``, ``objects``, ``key_missing``, ``fields_dropped``, ``c:FIELD`` (items
    with FIELD non-empty) and ``t:TYPE:FIELD`` (items whose FIELD has that JSON type)."""

    def __init__(self) -> None:
        self.runs: dict[str, Counter[str]] = {}
        self.fields: dict[str, set[str]] = {}  # tracked names per run (bounded by MAX_FIELDS)
        self.client: Any = None
        self.key_of: Callable[[str], str] | None = None
        self.ttl = 0
        self.last_flush = time.monotonic()

    def bind(self, client: Any, key_of: Callable[[str], str], ttl: int) -> None:
        self.client, self.key_of, self.ttl = client, key_of, ttl

    def written(self, run: str, items: Sequence[Any], key_fields: Sequence[str] = ()) -> int:
        """Count one durable object of ``run``; returns how many of its items lack a declared key field."""
        c = self.runs.get(run)
        if c is None:
            c = self.runs[run] = Counter()
        tracked = self.fields.setdefault(run, set())
        c["objects"] += 1
        c["items"] += len(items)
        missing = 0
        for item in items:
            data = item_to_dict(item)
            for key, value in data.items():
                name = str(key)  # a dict item may have non-string keys; its object has them as JSON strings
                if not name.isascii():
                    name = no_surrogates(name)  # as its object spells it (a lone surrogate cannot reach Redis)
                if name == "_meta":
                    continue
                if name not in tracked:
                    if len(tracked) >= MAX_FIELDS or len(name) > _MAX_NAME:
                        c["fields_dropped"] += 1
                        continue
                    tracked.add(name)
                c[f"t:{json_type(value)}:{name}"] += 1
                if not _empty(value):
                    c[f"c:{name}"] += 1
            if key_fields and key_values(data, key_fields) is None:
                missing += 1
        if missing:
            c["key_missing"] += missing
        return missing

    def due(self) -> bool:
        return bool(self.runs) and time.monotonic() - self.last_flush >= FLUSH_EVERY

    async def flush(self) -> None:
        """Send the counts (one MULTI of HINCRBYs); on an error they are kept for the next flush."""
        self.last_flush = time.monotonic()
        if not self.runs or self.client is None or self.key_of is None:
            return
        pending, self.runs = self.runs, {}
        try:
            pipe = self.client.pipeline(transaction=True)
            for run, counts in pending.items():
                key = self.key_of(run)
                for name, n in counts.items():
                    pipe.hincrby(key, name, n)
                pipe.expire(key, self.ttl)
            await pipe.execute()
        except BaseException:
            for run, counts in pending.items():  # merged back: counted at the next flush
                self.runs.setdefault(run, Counter()).update(counts)
            raise

    async def close(self, log: Any) -> None:
        """The last flush, at worker close; an error costs only coverage counts, so it is logged."""
        try:
            await self.flush()
        except Exception as exc:
            log.warning("tally_not_flushed", runs=len(self.runs), error=type(exc).__name__)

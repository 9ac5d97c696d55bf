"""Bounded-memory dedup for ``fleet export``: one record per idempotency key, latest ``fetched_at`` wins.

Why on disk: a run may hold millions of items, more than an export process should hold in memory (a cron
pod has a few hundred MB). Records are spilled to hash partitions of a temp directory as they are read;
each partition is then deduplicated in memory on its own. A partition whose distinct keys would take more
than the memory budget is split again on the next bits of the same hash, so memory stays bounded by the
budget whatever the run's size, and the output order does not depend on the budget or on the order the
objects were read: records come out sorted by (64-bit BLAKE2b of the key, key).

Which record wins for a key: the greatest (``fetched_at`` as UTC, record text). The text breaks ties so the
choice is the same whichever delivery was read first; a record whose ``fetched_at`` is missing or not ISO
8601 loses to any that has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

__all__ = ["FANOUT", "Spill", "fetched_rank"]

#: First-level partitions (the top 6 bits of the key's hash); each split after that makes 16 (4 bits more).
FANOUT = 64
_TOP_BITS = 6
_SPLIT_BITS = 4
_MAX_LEVEL = (64 - _TOP_BITS) // _SPLIT_BITS
#: What one kept key costs in memory beyond its record text (dict slot, tuple, bytes headers): measured
#: ~230 bytes with CPython 3.11; rounded up so the budget is an upper bound.
_PER_KEY = 300
_BUF = 1 << 16
_key_json = json.JSONEncoder().encode  # ASCII JSON: no tab or newline can be inside


def fetched_rank(value: object) -> str:
    """``fetched_at`` as a sortable UTC text (``2026-01-02T03:04:05.000006``); "" when it is not a date.

    Normalised so that ``...Z``, ``+00:00`` and other offsets order by the instant, not by spelling."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Spill:
    """Records spilled by key hash to ``FANOUT`` files under ``directory``; :meth:`winners` reads them back
    deduplicated. One writer thread; the files are removed as they are consumed."""

    def __init__(self, directory: Path, budget_bytes: int) -> None:
        self.dir = directory
        self.budget = max(1 << 16, budget_bytes)
        self.records = 0
        self.splits = 0  # partitions split again because their keys exceeded the budget (for the bench)
        self._files: list[BinaryIO | None] = [None] * FANOUT
        self._last_fetched: object = None
        self._last_rank = ""

    def _path(self, name: str) -> Path:
        return self.dir / f"spill-{name}"

    def add(self, key: str, fetched_at: object, line: bytes) -> None:
        """Spill one record (its JSON text ``line``, no newline) under ``key``."""
        if fetched_at != self._last_fetched:  # the items of one object share their fetched_at
            self._last_fetched, self._last_rank = fetched_at, fetched_rank(fetched_at)
        h = _hash(key)
        part = h >> (64 - _TOP_BITS)
        f = self._files[part]
        if f is None:
            f = self._files[part] = open(self._path(f"{part:02x}"), "wb", buffering=_BUF)
        # the key as JSON: no tab or newline inside; the record text is the last field and may hold tabs
        jkey = b'"%s"' % key.encode() if key.isascii() and key.isalnum() else _key_json(key).encode()
        f.write(b"%016x\t%s\t%s\t%s\n" % (h, jkey, self._last_rank.encode(), line))
        self.records += 1

    def close(self) -> None:
        for i, f in enumerate(self._files):
            if f is not None:
                f.close()
                self._files[i] = None

    def winners(self) -> Iterator[bytes]:
        """The winning record's text of every key, once, in (hash, key) order."""
        self.close()
        for part in range(FANOUT):
            path = self._path(f"{part:02x}")
            if path.exists():
                yield from self._partition(path, 0)

    def _partition(self, path: Path, level: int) -> Iterator[bytes]:
        best: dict[bytes, tuple[bytes, bytes]] = {}
        size = 0
        over = False
        with open(path, "rb", buffering=_BUF) as f:
            for raw in f:
                hx, key, rank, line = raw.rstrip(b"\n").split(b"\t", 3)
                ident = hx + b"\t" + key
                cur = best.get(ident)
                if cur is None:
                    best[ident] = (rank, line)
                    size += len(ident) + len(rank) + len(line) + _PER_KEY
                elif (rank, line) > cur:
                    best[ident] = (rank, line)
                    size += len(line) - len(cur[1])
                if size > self.budget and level < _MAX_LEVEL:
                    over = True
                    break
        if over:  # split on the next bits and take the parts in order
            best.clear()
            yield from self._split(path, level)
            return
        os.unlink(path)
        for ident in sorted(best):
            yield best.pop(ident)[1]

    def _split(self, path: Path, level: int) -> Iterator[bytes]:
        self.splits += 1
        shift = 64 - _TOP_BITS - _SPLIT_BITS * (level + 1)
        subs = [self.dir / f"{path.name}-{i:x}" for i in range(1 << _SPLIT_BITS)]
        files: list[BinaryIO | None] = [None] * len(subs)
        try:
            with open(path, "rb", buffering=_BUF) as f:
                for raw in f:
                    i = (int(raw[:16], 16) >> shift) & ((1 << _SPLIT_BITS) - 1)
                    out = files[i]
                    if out is None:
                        out = files[i] = open(subs[i], "wb", buffering=_BUF)
                    out.write(raw)
        finally:
            for out in files:
                if out is not None:
                    out.close()
        os.unlink(path)
        for sub in subs:
            if sub.exists():
                yield from self._partition(sub, level + 1)

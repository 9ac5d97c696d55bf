"""Reading a SEEN/DONE set as stored (lua/_helpers.lua, "SEEN/DONE encoding") from Python.

Why a module: the scripts are the only writers, but tests, ``make bench`` and operators need the set's
bucket strings (``<set key>:bbb``, one per 12-bit fingerprint prefix) to compare, measure or check it,
and the bucket naming must be spelled once on this side too. Membership goes through the HAS script
(``FleetQueue.has_member``), which also converts a set of the previous encoding."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from scraper.queue.names import is_fp

__all__ = ["BUCKETS", "bucket_keys", "buckets", "memory", "packed"]

BUCKETS = 4096  # one per value of the fingerprint's first 12 bits


def packed(fp: str) -> bytes:
    """A fingerprint (16 lowercase hex digits) as COMMIT takes it: its 3-hex-char bucket and its 7-byte
    member, 10 bytes (lua/_helpers.lua: fpparts, fpsplit). Why here: a script turned each fingerprint into
    these with some ten calls of Lua's C functions, ~12k of Redis's instructions a fingerprint, two or three
    times a page (issue #18); Python does it once. ValueError for anything but 16 hex digits (every
    fingerprint Fleet writes is one: names.is_fp)."""
    if not is_fp(fp):
        raise ValueError(f"not a fingerprint of 16 lowercase hex digits: {fp!r:.40}")
    return fp[:3].encode("ascii") + bytes.fromhex(fp[3:] + "0")


def bucket_keys(key: str) -> list[str]:
    """The names of every possible bucket string of the set ``key`` (fleet:{spider}:seen:RUN)."""
    return [f"{key}:{i:03x}" for i in range(BUCKETS)]


async def buckets(client: aioredis.Redis, key: str) -> dict[str, bytes]:
    """The set's non-empty buckets: 3-hex-char bucket -> concatenated 7-byte members (one MGET per 512:
    all of a set's keys share its hash tag, so each MGET stays in one cluster slot)."""
    names = bucket_keys(key)
    out: dict[str, bytes] = {}
    for i in range(0, len(names), 512):
        chunk = names[i : i + 512]
        for name, value in zip(chunk, await client.mget(chunk), strict=True):
            if value is not None:
                out[name[-3:]] = value if isinstance(value, bytes) else value.encode("latin-1")
    return out


async def memory(client: aioredis.Redis, key: str) -> int:
    """Bytes the set takes (MEMORY USAGE, exact: samples=0) over its hash and every bucket string."""
    total = 0
    names = [key, *bucket_keys(key)]
    for i in range(0, len(names), 512):
        pipe = client.pipeline(transaction=False)
        for name in names[i : i + 512]:
            pipe.memory_usage(name, samples=0)
        res: list[Any] = await pipe.execute()
        total += sum(int(x) for x in res if x is not None)
    return total

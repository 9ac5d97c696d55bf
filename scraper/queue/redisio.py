"""Redis clients for the fleet: redis.asyncio, with commands packed by hiredis's C packer.

Why: redis-py's asyncio connection packs every argument in Python (an encode and a bytes join each,
re-copying the growing buffer). A COMMIT of a batch carries ~8 arguments a request plus 5 a discovered
child, LEASE and HEARTBEAT a few a lease: on the worker's reactor thread that was ~15 µs a page,
measured. hiredis (a dependency; its reply parser is already in use) packs the same RESP bytes in C.
Arguments redis-py encodes in a way of its own (floats: ``repr``; memoryviews) or refuses (bool,
None) keep redis-py's packer, so behaviour and errors stay redis-py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["REDIS_ERRORS", "client", "hiredis_pack"]

# Errors that mean "Redis is unreachable right now" (ride the outage out), as opposed to a command
# Redis refused (a bug or a configuration to fix).
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

Pack = Callable[[tuple[Any, ...]], bytes]
hiredis_pack: Pack | None
try:
    from hiredis import pack_command as _pack_one

    hiredis_pack = cast(Pack, _pack_one)
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs without it, slower
    hiredis_pack = None

_PLAIN = (str, bytes, int)


class _HiredisPacking:
    """Mixin over a redis-py asyncio connection class (TCP, TLS or unix socket)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0] if args else None
        # redis-py sends multi-word command names ("SCRIPT LOAD") as separate arguments
        if isinstance(first, str) and " " in first:
            args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        if hiredis_pack is None or any(type(a) not in _PLAIN for a in args):
            return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]
        return [hiredis_pack(args)]


_CLASSES: dict[type[Any], type[Any]] = {}


def _packing(base: type[Any]) -> type[Any]:
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return cls


def client(url: str, **kwargs: Any) -> aioredis.Redis:
    """``redis.asyncio.Redis.from_url(url, **kwargs)`` whose connections pack commands with hiredis."""
    conn = aioredis.Redis.from_url(url, **kwargs)
    pool = conn.connection_pool
    pool.connection_class = _packing(pool.connection_class)
    return conn

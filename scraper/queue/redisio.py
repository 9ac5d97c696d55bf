"""Redis clients for the fleet: redis.asyncio, with commands packed by hiredis's C packer.

Why: redis-py's asyncio connection packs every argument in Python (an encode and a bytes join each,
re-copying the growing buffer). A COMMIT of a batch carries ~8 arguments a request plus 5 a discovered
child, LEASE and HEARTBEAT a few a lease: on the worker's reactor thread that was ~15 µs a page,
measured. hiredis (a dependency; its reply parser is already in use) packs the same RESP bytes in C.
Arguments redis-py encodes in a way of its own (floats: ``repr``; memoryviews) or refuses (bool,
None) keep redis-py's packer, so behaviour and errors stay redis-py's.

Redis Cluster: every client of the fleet is made here (``client``, ``sync_client``), from one ordinary
``redis://`` URL to any node. A node that answers ``INFO cluster`` with ``cluster_enabled:1`` gets
redis-py's cluster client instead (``redis.asyncio.cluster.RedisCluster``, or ``redis.RedisCluster`` for
the CLI's synchronous probes), which routes each command to its slot's primary and follows MOVED/ASK.
Why detect rather than configure: the same URL then works whether ops run one Redis or a cluster, and a
cluster node reached through a plain client would answer every other spider's commands with MOVED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterUnreachableError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = [
    "REDIS_ERRORS", "client", "dedicated_connection", "hiredis_pack", "is_cluster", "is_cluster_url", "primaries",
    "sync_client",
]

# Errors that mean "Redis is unreachable right now" (ride the outage out), as opposed to a command
# Redis refused (a bug or a configuration to fix). On a cluster: a slot whose primary is down or not
# yet known (CLUSTERDOWN, TRYAGAIN, no node for the slot, no node reachable) is the same kind of outage.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, ClusterDownError, TryAgainError,
                SlotNotCoveredError, RedisClusterUnreachableError)

Pack = Callable[[tuple[Any, ...]], bytes]
hiredis_pack: Pack | None
try:
    from hiredis import pack_command as _pack_one

    hiredis_pack = cast(Pack, _pack_one)
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py packs without it, slower
    hiredis_pack = None

_PLAIN = (str, bytes, int)
_PLAIN_SET = frozenset(_PLAIN)  # the check per argument at C speed (a LEASE or COMMIT sends ~100 of them)


class _HiredisPacking:
    """Mixin over a redis-py asyncio connection class (TCP, TLS or unix socket)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0] if args else None
        # redis-py sends multi-word command names ("SCRIPT LOAD") as separate arguments
        if isinstance(first, str) and " " in first:
            args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        if hiredis_pack is None or not _PLAIN_SET.issuperset(map(type, args)):
            return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]
        return [hiredis_pack(args)]


_CLASSES: dict[type[Any], type[Any]] = {}


def _packing(base: type[Any]) -> type[Any]:
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return cls


_CLUSTER_URLS: dict[str, bool] = {}


def is_cluster_url(url: str) -> bool:
    """True when the Redis at ``url`` is a cluster node (INFO ``cluster_enabled:1``); cached per URL.

    A blocking probe (once per process and URL, at client construction): the CLI is synchronous
    anyway, and a worker makes its clients once at start-up. A Redis that cannot be reached or refuses
    INFO counts as a plain one and is not cached, so the next client made after the outage asks
    again; the callers' own reachability checks report the outage."""
    known = _CLUSTER_URLS.get(url)
    if known is not None:
        return known
    probe = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        info = probe.info("cluster")
    except (redis.RedisError, OSError):
        return False
    finally:
        probe.close()
    found = _CLUSTER_URLS[url] = str(info.get("cluster_enabled", 0)) == "1"
    return found


def client(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` whose connections pack commands with hiredis: a
    ``redis.asyncio.Redis``, or a ``redis.asyncio.cluster.RedisCluster`` when ``url`` is a cluster node.

    The cluster client is typed as ``Redis`` for the callers: it offers the same commands, scripts
    (EVALSHA routed by the first key; SCRIPT LOAD sent to every primary), pipelines (split per node
    unless transactional) and ``scan_iter`` (every primary)."""
    if is_cluster_url(url):
        rc = AsyncRedisCluster.from_url(url, **kwargs)  # a database other than 0 is refused: cluster has one
        packing = _packing(rc.connection_kwargs["connection_class"])
        rc.connection_kwargs["connection_class"] = packing  # nodes found at initialize()
        for node in rc.get_nodes():  # the start-up node, made before
            node.connection_class = packing
        return cast(aioredis.Redis, rc)
    conn = aioredis.Redis.from_url(url, **kwargs)
    pool = conn.connection_pool
    pool.connection_class = _packing(pool.connection_class)
    return conn


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """``client`` for synchronous code (the CLI's probes, the progress display): ``redis.Redis`` or
    ``redis.RedisCluster``."""
    if is_cluster_url(url):
        return cast(redis.Redis, redis.RedisCluster.from_url(url, **kwargs))
    return redis.Redis.from_url(url, **kwargs)


def is_cluster(conn: Any) -> bool:
    return isinstance(conn, (AsyncRedisCluster, redis.RedisCluster))


def primaries(conn: redis.Redis) -> Iterator[redis.Redis]:
    """A plain client per primary of a synchronous cluster client (or ``conn`` itself): for checks that
    are about each server (eviction policy, AOF), not about keys."""
    if not isinstance(conn, redis.RedisCluster):
        yield conn
        return
    for node in conn.get_primaries():
        plain = conn.get_redis_connection(node)
        if plain is not None:
            yield plain


async def dedicated_connection(conn: aioredis.Redis, key: str) -> Any:
    """A new connection, outside any pool, to the server that holds ``key``: for a stream of pipelined
    commands whose replies the caller reads itself (scraper.queue.seedwire). On a cluster it goes to
    the primary of ``key``'s slot, so every command of the stream must stay in that slot."""
    if isinstance(conn, AsyncRedisCluster):
        await conn.initialize()
        node = conn.get_node_from_key(key)
        if node is None:
            raise redis.RedisError(f"no cluster node serves the slot of {key!r}")
        c = node.connection_class(**node.connection_kwargs)
    else:
        c = conn.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    await c.connect()
    return c

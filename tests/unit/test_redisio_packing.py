"""The hiredis packing of redis-py's asyncio connections (scraper.queue.redisio): byte for byte what
redis-py packs for str, bytes and int arguments; anything else (a float, a bool, None, a memoryview) goes
redis-py's own way, which formats or refuses it as redis-py always did."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from scraper.queue import redisio

pytestmark = pytest.mark.skipif(redisio.hiredis_pack is None, reason="hiredis not installed")


def _conns() -> tuple[Any, Any]:
    ours = redisio._packing(Connection)(host="127.0.0.1", port=1)
    return ours, Connection(host="127.0.0.1", port=1)


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "k1", b"k2", "é", b"\x00\xff", -7, 0, ""),
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETNAME", "x"),
])
def test_plain_arguments_pack_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours, theirs = _conns()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


@pytest.mark.parametrize("odd", [1.5, memoryview(b"ab")])
def test_other_types_go_redis_pys_way(odd: Any) -> None:
    ours, theirs = _conns()
    assert b"".join(ours.pack_command("SET", "k", odd)) == b"".join(theirs.pack_command("SET", "k", odd))


@pytest.mark.parametrize("bad", [True, None])
def test_what_redis_py_refuses_is_still_refused(bad: Any) -> None:
    ours, _ = _conns()
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", bad)

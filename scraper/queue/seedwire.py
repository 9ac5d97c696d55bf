"""Seeding on the wire: a queue entry's script arguments, SEED_BULK batches packed and pipelined on a
connection of their own (``SeedStream``), and the reply helpers the client shares."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from scraper.queue import scripts as lua
from scraper.queue.envelope import Envelope, new_ids
from scraper.queue.keys import QueueError, new_id
from scraper.queue.seenset import packed

__all__ = ["SeedStream", "as_eval", "child_args", "entry_args", "exec_reply", "fill_rows", "pairs", "text"]


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def pairs(flat: Sequence[Any], n: int) -> list[list[Any]]:
    return [list(flat[i : i + n]) for i in range(0, len(flat), n)]


def entry_args(env: Envelope, *, force_filter: bool = False, entry_id: str | None = None) -> list[str]:
    dont_filter = "0" if force_filter else ("1" if env.dont_filter else "0")
    return [entry_id or new_id(env.fp), env.dumps(), env.fp, str(env.priority), dont_filter]


def child_args(env: Envelope, entry_id: str | None) -> list[Any]:
    """A discovered request's COMMIT arguments: entry_args with its fingerprint packed (seenset.packed)."""
    args: list[Any] = entry_args(env, entry_id=entry_id)
    args[2] = packed(args[2])
    return args


async def fill_rows(
    rows: Iterator[tuple[str, str, str]], hset: list[str], script: list[str], batch: int, yielding: bool
) -> int:
    """Append up to ``batch`` rows to the HSET and SEED_BULK arguments; returns how many.

    ``yielding``: a batch is in flight, so give asyncio a turn every 256 rows to stream it to Redis
    and read replies."""
    n = 0
    ids: list[str] = []
    for json_, fp, prio in rows:
        k = n & 255
        if not k:
            if yielding and n:
                await asyncio.sleep(0)
            ids = new_ids(256)
        i = ids[k][:12] + fp[-4:] if len(fp) == 16 else ids[k]  # ends like its fp: keys.new_id says why
        hset += (i, json_)
        script += (i, fp, prio)
        n += 1
        if n == batch:
            break
    return n


def as_eval(script: Sequence[str]) -> list[str]:
    """An ``EVALSHA sha ...`` command of SEED_BULK as ``EVAL source ...``."""
    return ["EVAL", lua.load("seed_bulk").source, *script[2:]]


async def exec_reply(conn: Any) -> int:
    """The SEED_BULK count from the replies to MULTI, HSET, EVALSHA, EXEC (error replies raise)."""
    for _ in range(3):
        await conn.read_response()  # +OK, +QUEUED, +QUEUED
    res = await conn.read_response()
    if not isinstance(res, list) or len(res) != 2:
        raise QueueError(f"seed transaction did not run: {res!r}")
    for x in res:
        if isinstance(x, Exception):
            raise x
    return int(res[1])


class SeedStream:
    """Seed batches pipelined on a connection of their own.

    Why: with a redis-py pipeline per batch, each batch was packed (pure Python, ~3.5 µs an entry)
    and sent only after the previous reply was back, and Redis idled meanwhile. Here a batch is packed
    as soon as it is built and sent while Redis still runs the previous one, whose reply is read after;
    one connection keeps the batches in input order (Redis runs a connection's commands in order)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.enqueued = 0
        self._shipping: asyncio.Future[None] | None = None  # sends a batch, then reads the previous reply
        self._unread: collections.deque[Sequence[Sequence[str]]] = collections.deque()  # sent, reply unread

    async def send(self, commands: Sequence[Sequence[str]]) -> None:
        packed = self.conn.pack_commands(commands)  # hiredis's packer on a scraper.queue.redisio client
        if self._shipping is not None:
            await self._shipping
        self._shipping = asyncio.ensure_future(self._ship(packed, commands))
        await asyncio.sleep(0)  # start sending it

    async def _ship(self, packed: list[bytes], commands: Sequence[Sequence[str]]) -> None:
        await self.conn.send_packed_command(packed, check_health=False)  # no PING amid pending replies
        self._unread.append(commands)
        if len(self._unread) > 1:
            await self._read_one()

    async def _read_one(self) -> None:
        """Read the oldest unread reply. A batch whose EVALSHA met NOSCRIPT (the script cache was flushed
        mid-seed; its HSET ran) is sent again with EVAL, which loads the script, and read in its turn."""
        commands = self._unread.popleft()
        try:
            self.enqueued += await exec_reply(self.conn)
        except NoScriptError:
            multi, hset, script, exec_ = commands
            if script[0] != "EVALSHA":
                raise
            again = [multi, hset, as_eval(script), exec_]
            await self.conn.send_packed_command(self.conn.pack_commands(again), check_health=False)
            self._unread.append(again)

    async def finish(self) -> int:
        """Wait for every batch; returns how many entries they enqueued."""
        if self._shipping is not None:
            await self._shipping
            self._shipping = None
        while self._unread:
            await self._read_one()
        return self.enqueued

    async def close(self) -> None:
        """Drop the connection. If the input failed midway, first let the batches already handed over
        run and read their replies: closing a socket with replies unread resets it, and Redis would
        drop a batch it had not read in full."""
        try:
            ok = True
            if self._shipping is not None:
                await asyncio.wait([self._shipping])
                ok = not self._shipping.cancelled() and self._shipping.exception() is None
                self._shipping = None
            if ok and self._unread:
                with contextlib.suppress(Exception):  # the caller is raising its own error
                    while self._unread:
                        await self._read_one()
        finally:
            await self.conn.disconnect()


"""Durability sinks: where a finished request's objects become durable, behind one protocol.

Two stores, two shapes of write, one contract: :meth:`Sink.stage` takes a request's objects (at once, on
the reactor thread: cheap), :meth:`Sink.durable` answers, per request of a batch, "durable under this
key" or "failed with this error". Nothing is acknowledged in Redis before ``durable`` said so
(:class:`Durability` calls ``written`` only then). Why a protocol: the worker used to test
``if self.filewriter is not None`` in three places; a third store is now one class.

* :class:`LocalSink` — a local store: bytes go to the writer process (scraper.store.filewriter) as they
  come, and a batch becomes durable with one barrier (one syncfs: group commit).
* :class:`PoolSink` — a remote store (S3): one request's PUTs per thread job, up to STORE_THREADS in
  parallel; each PUT is a network round trip and durable when it returns.

No conditional puts: keys are deterministic (scraper.store.objects), so a redelivered request overwrites the
very same object with the same records; a plain put is idempotent here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from scraper.store.backends import LocalStore
from scraper.store.filewriter import FileWriter
from scraper.store.objects import ObjectWriter, WriteContext, encode_items, items_key, raw_key
from scraper.worker.ledger import LeaseState

__all__ = ["STORE_THREADS", "Durability", "LocalSink", "PoolSink", "Sink", "WriteResult", "open_sink"]

WriteResult = tuple[str | None, BaseException | None]  # (items key, error) of one request
STORE_THREADS = 8  # parallel PUTs to a remote store; a local store uses one at a time (group commit)


class Sink(Protocol):
    """Makes objects durable. ``width`` batches of up to ``size`` requests are in flight at once."""

    width: int
    size: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def stage(self, state: LeaseState) -> WriteResult | None:
        """Take the request's objects now; a result here (an error, a key) is carried to durable()."""

    async def durable(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> list[WriteResult]:
        """Per request of the batch, in order: (items key, None) once durable, or (None, error)."""


class LocalSink:
    """Local files through the writer process: the reactor thread only encodes the items and copies
    bytes into a pipe; creating files, gzip and syncfs run on the other core. (On this thread they cost
    40 µs to >1 ms of kernel time per page; in a store thread every syscall hands the GIL back and forth:
    measured slower still.)"""

    def __init__(self, filewriter: FileWriter, ctx: Callable[[LeaseState], WriteContext], commit_batch: int
                 ) -> None:
        self.filewriter = filewriter
        self.ctx = ctx
        self.width, self.size = 1, commit_batch

    async def start(self) -> None:
        await self.filewriter.start()

    async def close(self) -> None:
        await self.filewriter.close()

    def stage(self, state: LeaseState) -> WriteResult | None:
        progress, items = state.progress, state.out.items
        progress.writes = ()
        try:
            ctx = self.ctx(state)
            key = None
            puts: list[tuple[str, bytes, bool]] = []
            if items:
                key = items_key(ctx.spider, ctx.run, ctx.fp)
                puts.append((key, encode_items(ctx, items), False))
            if progress.write_raw:
                puts.append((raw_key(ctx.spider, ctx.run, ctx.fp), state.fetch.body, True))
            # keys and bytes first: a bad key (InvalidKeyError) leaves no put behind in the pipe
            progress.writes = tuple(self.filewriter.put(k, data, gzip=gz) for k, data, gz in puts)
            return key, None
        except Exception as exc:
            return None, exc

    async def durable(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> list[WriteResult]:
        """One writer barrier for the batch (one syncfs), then each request's own outcome: a put that
        failed fails its request only, the others' objects are durable (FileWriter.result)."""
        with contextlib.suppress(Exception):  # a barrier that failed as a whole: result() says so per put
            await self.filewriter.sync()
        results: list[WriteResult] = []
        for state, res in batch:
            key, exc = res or (None, None)
            for ticket in state.progress.writes:  # every ticket is asked for once, even after a failed one
                err = self.filewriter.result(ticket)
                exc = exc or err
            state.progress.writes = ()
            results.append((None, exc) if exc is not None else (key, None))
        return results


class PoolSink:
    """A remote store (S3): PUTs in the thread pool, each durable when it returns."""

    def __init__(self, writer: ObjectWriter, pool: ThreadPoolExecutor, ctx: Callable[[LeaseState], WriteContext]
                 ) -> None:
        self.writer = writer
        self.pool = pool
        self.ctx = ctx
        self.width, self.size = STORE_THREADS, 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def stage(self, state: LeaseState) -> WriteResult | None:
        return None  # built in the thread, when the PUT goes

    def _put(self, batch: list[tuple[LeaseState, WriteContext]]) -> list[WriteResult]:
        """The batch's PUTs; an error is kept per request (it is retried on its A budget)."""
        out: list[WriteResult] = []
        for state, ctx in batch:
            try:
                key = None
                if state.out.items:
                    key = self.writer.write_items(ctx, state.out.items)
                if state.progress.write_raw:
                    self.writer.write_raw(ctx.spider, ctx.run, ctx.fp, state.fetch.body)
                out.append((key, None))
            except Exception as exc:
                out.append((None, exc))
        return out

    async def durable(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> list[WriteResult]:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self._put, [(st, self.ctx(st)) for st, _ in batch])
        except Exception as pool_exc:  # the pool itself failed (shutdown): nothing was confirmed
            return [(None, pool_exc) for _ in batch]


def open_sink(writer: ObjectWriter, pool: ThreadPoolExecutor, ctx: Callable[[LeaseState], WriteContext],
              commit_batch: int) -> Sink:
    """A local store writes through a child process; a remote one (S3) through the thread pool."""
    store = writer.store
    if isinstance(store, LocalStore):
        return LocalSink(FileWriter(f"file://{store.root.resolve()}"), ctx, commit_batch)
    return PoolSink(writer, pool, ctx)


class Durability:
    """The objects not yet durable, handed to the sink in batches; ``written`` / ``failed`` get each
    request's outcome once the sink answered. Batches form by themselves: whatever was staged while the
    previous batch was in flight."""

    def __init__(self, sink: Sink,
                 spawn: Callable[[Any], None],
                 done: Callable[[list[tuple[LeaseState, WriteResult | None]], list[WriteResult]], Any]) -> None:
        self.sink = sink
        self.spawn = spawn
        self.done = done  # async: settles each request of an answered batch
        self.to_write: list[tuple[LeaseState, WriteResult | None]] = []  # objects not yet durable
        self.writing = 0  # batches in flight

    def busy(self) -> bool:
        return bool(self.to_write) or self.writing > 0

    def queue(self, state: LeaseState) -> None:
        """Queue the request's objects for the store (again, after a store outage)."""
        self.to_write.append((state, self.sink.stage(state)))
        self.pump()

    def pump(self) -> None:
        sink = self.sink
        while self.to_write and self.writing < sink.width:
            batch, self.to_write = self.to_write[:sink.size], self.to_write[sink.size:]
            self.writing += 1
            self.spawn(self._write(batch))

    async def _write(self, batch: list[tuple[LeaseState, WriteResult | None]]) -> None:
        try:
            results = await self.sink.durable(batch)
        finally:
            self.writing -= 1
        self.pump()
        await self.done(batch, results)

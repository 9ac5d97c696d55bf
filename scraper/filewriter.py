"""The local object store's writer: a child process that does a worker's file writes and flushes.

Why a process: on the reactor thread every object costs the crawl a few file syscalls (create, write,
rename: 40 µs to over 1 ms of kernel time per page, depending on the disk), and in a thread each of
those syscalls hands the GIL back and forth with the reactor (measured slower still). A child process
takes the writes, the gzip of raw bodies and the group-commit ``syncfs`` onto the other core; the
worker only copies bytes into a pipe.

Protocol (worker → writer on stdin, one frame per operation, processed strictly in order):

* ``P`` put ``key`` <- ``data``, atomically (temp file + rename) but not yet durable;
* ``Z`` the same, gzipping ``data`` first (raw bodies);
* ``S`` sync barrier ``seq``: one ``syncfs`` makes every earlier put durable, then the writer answers
  on stdout ``seq`` and whether every put since the previous barrier succeeded (with the first error).

A put that fails is reported by the next barrier, so the worker treats the whole batch as not written
(retried on its A budget) — never acknowledged. The writer exits when stdin closes: a SIGKILLed
worker's writer finishes the frame in hand and goes, and since nothing it wrote was acknowledged, the
redelivery overwrites the same keys. It ignores SIGINT/SIGTERM: the worker decides when to stop and
closes the pipe after its last barrier.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import sys
from typing import BinaryIO

from scraper.store import LocalStore, StoreError, gzip_bytes

_REQ = struct.Struct(">cII")  # op, len(key) or seq, len(data)
_REP = struct.Struct(">IBI")  # seq, ok, len(error)
FLUSH_BYTES = 1 << 20  # queued put bytes that are written to the pipe without waiting for a barrier


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(uri: str, inp: BinaryIO, out: BinaryIO) -> None:
    """The writer's loop (runs in the child process)."""
    store = LocalStore(uri)
    error: str | None = None
    while True:
        head = _read_exact(inp, _REQ.size)
        if head is None:
            return
        op, a, b = _REQ.unpack(head)
        if op in (b"P", b"Z"):
            payload = _read_exact(inp, a + b)
            if payload is None:
                return
            key, data = payload[:a].decode("utf-8"), payload[a:]
            try:
                store.put(key, gzip_bytes(data) if op == b"Z" else data, durable=False)
            except (StoreError, OSError, ValueError) as exc:
                error = error or str(exc)
        elif op == b"S":
            if error is None:
                try:
                    store.sync()
                except (StoreError, OSError) as exc:
                    error = f"local store: sync failed: {exc}"
            msg = (error or "").encode("utf-8")[:2000]
            out.write(_REP.pack(a, error is None, len(msg)) + msg)
            out.flush()
            error = None
        else:
            raise SystemExit(f"fleet filewriter: unknown frame {op!r}")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)


class _Replies(asyncio.Protocol):
    def __init__(self, owner: FileWriter, gen: int) -> None:
        self.owner = owner
        self.gen = gen  # which writer process these replies come from
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= _REP.size:
            seq, ok, n = _REP.unpack_from(self.buf)
            if len(self.buf) < _REP.size + n:
                return
            msg = bytes(self.buf[_REP.size:_REP.size + n]).decode("utf-8", "replace")
            del self.buf[:_REP.size + n]
            if self.gen == self.owner._gen:
                self.owner._answer(seq, bool(ok), msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gen == self.owner._gen:
            self.owner._lost()


class FileWriter:
    """The worker's handle on its writer process (reactor thread only).

    ``put`` only queues bytes for the pipe: they are written when the next barrier goes out, or once
    ``FLUSH_BYTES`` are waiting. Why: a write(2) per object, and a writer wake-up on each, cost the
    reactor thread about 1 % of a page's CPU (py-spy, ``make bench`` c). The writer now does a batch's
    files in one burst when its barrier goes out, so they sit on that batch's way to its ack (only
    acks wait for barriers: a crawl's pace does not, and the bench measured no loss). ``sync``
    resolves once everything queued before it is durable, or raises StoreError. If the writer dies,
    pending barriers fail, and so does the next one; that barrier starts a new writer. Puts carry an
    epoch, so a later barrier never vouches for a dead writer's puts or for a put that failed."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: asyncio.WriteTransport | None = None
        self._in: asyncio.ReadTransport | None = None
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._failed: str | None = None  # a put that could not be queued since the last barrier
        self._closing = False
        self._gen = 0
        self._pending: list[bytes] = []  # frames put since the last write to the pipe
        self._pending_bytes = 0
        # Puts are vouched for by barriers of their own epoch only. A new epoch starts when a writer
        # process starts and when a barrier reports a failed put: the writer then forgets the error,
        # and a later barrier must not vouch for a put made before it (it may be the one that failed).
        self._epoch = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._gen += 1
        self._epoch += 1
        gen = self._gen
        proc = subprocess.Popen(
            [sys.executable, "-m", "scraper.filewriter", self.uri],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._out, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, proc.stdin)
        self._in, _ = await loop.connect_read_pipe(lambda: _Replies(self, gen), proc.stdout)

    def _alive(self) -> bool:
        return self._out is not None and not self._out.is_closing()

    def put(self, key: str, data: bytes, *, gzip: bool = False) -> int:
        """Queue a put; returns its epoch (-1: no writer took it). Only a barrier that answers with the
        same epoch makes it durable (see :meth:`sync`)."""
        if not self._alive():
            self._failed = self._failed or "local store writer exited"
            return -1
        k = key.encode("utf-8")
        self._pending += (_REQ.pack(b"Z" if gzip else b"P", len(k), len(data)), k, data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        return self._epoch

    def _flush(self) -> None:
        frames, self._pending, self._pending_bytes = self._pending, [], 0
        if not frames:
            return
        if not self._alive():
            self._failed = self._failed or "local store writer exited"
            return
        assert self._out is not None
        self._out.write(b"".join(frames))

    async def sync(self) -> int:
        """Barrier: every put queued before it is durable. Returns the epoch it answered in: puts of an
        earlier epoch (to a writer that died, or before a barrier that reported a failed put) are not
        covered, even when an earlier barrier already failed for them, and must be redone."""
        if self._alive():
            self._flush()  # the barrier covers every put before it; a dead pipe shows here at once
        failed, self._failed = self._failed, None
        if not self._alive():
            # the writer that took this batch's puts is gone: a new one cannot vouch for them
            self._stop()
            await self.start()
            raise StoreError(failed or "local store writer exited; the batch is retried")
        if failed:
            raise StoreError(failed)
        assert self._out is not None
        self._seq = (self._seq + 1) % 2**32
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[self._seq] = fut
        self._out.write(_REQ.pack(b"S", self._seq, 0))
        return await fut

    def _answer(self, seq: int, ok: bool, msg: str) -> None:
        if not ok:
            self._epoch += 1  # answers come in order: every later barrier answers in the new epoch
        fut = self._waiting.pop(seq, None)
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(self._epoch)
            else:
                fut.set_exception(StoreError(msg or "local store write failed"))

    def _lost(self) -> None:
        """The writer's stdout closed: nothing since the last answered barrier is known to be on disk."""
        self._fail_waiting()
        if not self._closing:
            self._stop()

    def _fail_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(StoreError("local store writer exited; the batch is retried"))

    def _stop(self) -> None:
        self._pending, self._pending_bytes = [], 0
        self._fail_waiting()
        self._gen += 1  # late replies or EOF of the old process are ignored from here on
        for t in (self._out, self._in):
            if t is not None:
                t.close()
        self._out = self._in = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    async def close(self) -> None:
        """EOF to the writer; it exits once the frames already in the pipe are written."""
        self._closing = True
        self._flush()
        if self._out is not None:
            self._out.close()
        proc = self.proc
        if proc is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._stop()


if __name__ == "__main__":
    main()

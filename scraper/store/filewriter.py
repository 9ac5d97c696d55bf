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
  on stdout ``seq``, whether the syncfs succeeded, how many puts it has taken so far, and each put since
  the previous barrier that failed (its number and error; ``K``: the key was refused, ``E``: I/O).

Failures are per put. A put that fails (a key the store refuses, a file where a directory must go, a full
disk) is reported by number, and the barrier still runs its syncfs for the others: one bad object fails
only its own request. (It used to fail the barrier, so every request of the batch, and the next batch's
early puts, were retried, and the runtime took the failure for a store outage.) Only a failed syncfs
leaves every put since the previous barrier unconfirmed. The writer exits when stdin closes: a SIGKILLed
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

from scraper.store.backends import InvalidKeyError, LocalStore, StoreError, gzip_bytes

__all__ = ["FLUSH_BYTES", "MAX_ERROR", "FileWriter", "main", "serve"]

_REQ = struct.Struct(">cII")  # op, len(key) or seq, len(data)
_REP = struct.Struct(">IBQII")  # seq, syncfs ok, puts taken so far, failed puts, len(syncfs error)
_FAIL = struct.Struct(">cQI")  # kind (K: key refused, E: I/O), put number, len(error)
FLUSH_BYTES = 1 << 20  # queued put bytes that are written to the pipe without waiting for a barrier
MAX_ERROR = 500  # bytes of one error message on the reply pipe
_LOST = "local store writer exited before the write was confirmed"


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _cut(msg: str) -> bytes:
    return msg.encode("utf-8", "replace")[:MAX_ERROR]


def serve(uri: str, inp: BinaryIO, out: BinaryIO) -> None:
    """The writer's loop (runs in the child process)."""
    store = LocalStore(uri)
    taken = 0  # puts received so far: both ends number them in order, from 0
    failed: list[tuple[bytes, int, bytes]] = []  # since the last barrier
    while True:
        head = _read_exact(inp, _REQ.size)
        if head is None:
            return
        op, a, b = _REQ.unpack(head)
        if op in (b"P", b"Z"):
            payload = _read_exact(inp, a + b)
            if payload is None:
                return
            n, taken = taken, taken + 1
            try:
                key, data = payload[:a].decode("utf-8"), payload[a:]
                store.put(key, gzip_bytes(data) if op == b"Z" else data, durable=False)
            except (InvalidKeyError, UnicodeDecodeError) as exc:
                failed.append((b"K", n, _cut(str(exc))))
            except (StoreError, OSError, ValueError) as exc:
                failed.append((b"E", n, _cut(str(exc))))
        elif op == b"S":
            # always: the puts that did succeed are made durable whatever failed beside them
            error = b""
            try:
                store.sync()
            except (StoreError, OSError) as exc:
                error = _cut(f"local store: sync failed: {exc}")
            parts = [_REP.pack(a, not error, taken, len(failed), len(error)), error]
            for kind, n, msg in failed:
                parts += (_FAIL.pack(kind, n, len(msg)), msg)
            out.write(b"".join(parts))
            out.flush()
            failed = []
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
            seq, ok, taken, nfail, nerr = _REP.unpack_from(self.buf)
            end = _REP.size + nerr
            fails: list[tuple[int, BaseException]] = []
            for _ in range(nfail):
                if len(self.buf) < end + _FAIL.size:
                    return
                kind, n, size = _FAIL.unpack_from(self.buf, end)
                if len(self.buf) < end + _FAIL.size + size:
                    return
                msg = bytes(self.buf[end + _FAIL.size:end + _FAIL.size + size]).decode("utf-8", "replace")
                fails.append((n, InvalidKeyError(msg) if kind == b"K" else StoreError(msg)))
                end += _FAIL.size + size
            if len(self.buf) < end:
                return
            error = bytes(self.buf[_REP.size:_REP.size + nerr]).decode("utf-8", "replace")
            del self.buf[:end]
            if self.gen == self.owner._gen:
                self.owner._answer(seq, bool(ok), taken, fails, error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gen == self.owner._gen:
            self.owner._lost()


class FileWriter:
    """The worker's handle on its writer process (reactor thread only).

    ``put`` only queues bytes for the pipe: they are written when the next barrier goes out, or once
    ``FLUSH_BYTES`` are waiting. Why: a write(2) per object, and a writer wake-up on each, cost the
    reactor thread about 1 % of a page's CPU (py-spy, ``make bench`` c). The writer now does a batch's
    files in one burst when its barrier goes out, so they sit on that batch's way to its ack (only
    acks wait for barriers: a crawl's pace does not, and the bench measured no loss).

    Every put gets a number (its ticket). ``sync`` resolves once everything queued before it is
    answered; then :meth:`result` says, per ticket, whether that put is durable or what failed. Per
    put, so one bad object fails only its own request. A put whose writer died before a barrier
    vouched for it, or to a dead writer, is not confirmed (an error); the next barrier starts a new
    writer. ``sync`` raises StoreError when the barrier itself failed (writer gone, syncfs error)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: asyncio.WriteTransport | None = None
        self._in: asyncio.ReadTransport | None = None
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._closing = False
        self._gen = 0
        self._pending: list[bytes] = []  # frames put since the last write to the pipe
        self._pending_bytes = 0
        self._next = 0  # ticket of the next put
        self._base = 0  # ticket of the current writer process's first put (its put number 0)
        self._confirmed = 0  # every put below this ticket has been answered (durable, or in _errors)
        # answered puts that are not durable, until the runtime asks (:meth:`result` pops them). Each
        # ticket is asked for once, after its batch's barrier, so this holds one batch's failures.
        self._errors: dict[int, BaseException] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._gen += 1
        gen = self._gen
        self._base = self._confirmed = self._next
        proc = subprocess.Popen(
            [sys.executable, "-m", "scraper.store.filewriter", self.uri],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._out, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, proc.stdin)
        self._in, _ = await loop.connect_read_pipe(lambda: _Replies(self, gen), proc.stdout)

    def _alive(self) -> bool:
        return self._out is not None and not self._out.is_closing()

    def put(self, key: str, data: bytes, *, gzip: bool = False) -> int:
        """Queue a put; returns its ticket, for :meth:`result` after the next :meth:`sync`."""
        try:
            k = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(f"object key is not valid UTF-8: {key[:160]!r}") from None
        ticket = self._next
        self._next += 1
        if not self._alive():
            self._errors[ticket] = StoreError(_LOST)
            return ticket
        self._pending += (_REQ.pack(b"Z" if gzip else b"P", len(k), len(data)), k, data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        return ticket

    def result(self, ticket: int) -> BaseException | None:
        """None: the put is durable. Otherwise why not (InvalidKeyError: its key; StoreError: I/O, or
        not confirmed). Ask once per ticket, after a :meth:`sync` that began after the put."""
        exc = self._errors.pop(ticket, None)
        if exc is not None:
            return exc
        if ticket < self._confirmed:
            return None
        return StoreError("local store write not confirmed by a barrier")

    def _flush(self) -> None:
        frames, self._pending, self._pending_bytes = self._pending, [], 0
        if not frames or not self._alive():
            return  # a dead writer's puts are marked lost by _stop
        assert self._out is not None
        self._out.write(b"".join(frames))

    async def sync(self) -> None:
        """Barrier: every put queued before it is answered when it returns (see :meth:`result`).
        StoreError: the barrier failed as a whole (writer gone, syncfs error); the puts it covers that
        were not answered before are not confirmed."""
        if self._alive():
            self._flush()  # the barrier covers every put before it; a dead pipe shows here at once
        if not self._alive():
            # the writer that took this batch's puts is gone: a new one cannot vouch for them
            self._stop()
            await self.start()
            raise StoreError("local store writer exited; its unconfirmed writes are redone")
        assert self._out is not None
        self._seq = (self._seq + 1) % 2**32
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[self._seq] = fut
        self._out.write(_REQ.pack(b"S", self._seq, 0))
        await fut

    def _answer(self, seq: int, ok: bool, taken: int, fails: list[tuple[int, BaseException]],
                error: str) -> None:
        # answers come in order: this one covers every put this process took before its barrier
        upto = self._base + taken
        for n, exc in fails:
            self._errors[self._base + n] = exc
        if not ok:  # syncfs failed: none of the puts since the previous barrier is known durable
            for t in range(self._confirmed, upto):
                self._errors.setdefault(t, StoreError(error or "local store sync failed"))
        self._confirmed = max(self._confirmed, upto)
        fut = self._waiting.pop(seq, None)
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(None)
            else:
                fut.set_exception(StoreError(error or "local store sync failed"))

    def _lost(self) -> None:
        """The writer's stdout closed: nothing since the last answered barrier is known to be on disk."""
        self._fail_waiting()
        if not self._closing:
            self._stop()

    def _fail_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(StoreError("local store writer exited; its unconfirmed writes are redone"))

    def _stop(self) -> None:
        self._pending, self._pending_bytes = [], 0
        # every put the old writer had not answered for is lost (one entry per put since its last barrier)
        for t in range(self._confirmed, self._next):
            self._errors.setdefault(t, StoreError(_LOST))
        self._confirmed = self._next
        self._fail_waiting()
        self._gen += 1  # late replies or EOF of the old process are ignored from here on
        for t_ in (self._out, self._in):
            if t_ is not None:
                t_.close()
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

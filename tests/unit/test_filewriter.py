"""The local store's writer process: frames in order, failures reported at the barrier, restart."""

from __future__ import annotations

import asyncio
import gzip
import io
import struct
from pathlib import Path

import pytest

from scraper.store.backends import InvalidKeyError, LocalStore, StoreError
from scraper.store.filewriter import _FAIL, _REP, _REQ, FileWriter, _Replies, serve


def frame(op: bytes, key: str, data: bytes = b"") -> bytes:
    k = key.encode()
    return _REQ.pack(op, len(k), len(data)) + k + data


def barrier(seq: int) -> bytes:
    return _REQ.pack(b"S", seq, 0)


def replies(raw: bytes) -> list[tuple[int, bool, int, list[tuple[bytes, int, str]], str]]:
    """(seq, syncfs ok, puts taken, [(kind, put number, error)], syncfs error) per barrier answer."""
    out = []
    while raw:
        seq, ok, taken, nfail, nerr = _REP.unpack_from(raw)
        pos = _REP.size + nerr
        error = raw[_REP.size:pos].decode()
        fails = []
        for _ in range(nfail):
            kind, n, size = _FAIL.unpack_from(raw, pos)
            pos += _FAIL.size
            fails.append((kind, n, raw[pos:pos + size].decode()))
            pos += size
        out.append((seq, bool(ok), taken, fails, error))
        raw = raw[pos:]
    return out


def test_serve_writes_puts_and_answers_each_barrier(tmp_path: Path) -> None:
    inp = io.BytesIO(frame(b"P", "items/a.jsonl", b'{"x":1}\n') + frame(b"Z", "raw/a.html.gz", b"<html>")
                     + barrier(7) + frame(b"P", "items/b.jsonl", b"b") + barrier(8))
    out = io.BytesIO()
    serve(f"file://{tmp_path}", inp, out)
    assert replies(out.getvalue()) == [(7, True, 2, [], ""), (8, True, 3, [], "")]
    store = LocalStore(f"file://{tmp_path}")
    assert store.get("items/a.jsonl") == b'{"x":1}\n'
    assert gzip.decompress(store.get("raw/a.html.gz")) == b"<html>"
    assert store.get("items/b.jsonl") == b"b"


def test_a_failed_put_fails_only_itself(tmp_path: Path) -> None:
    """One barrier, four puts, two of them bad: the barrier still syncs, names the two by number (K: the
    key was refused, E: I/O), and the two good objects are on disk. (It used to fail the whole barrier,
    so every request of the batch was retried and the store was declared unavailable.)"""
    (tmp_path / "items").write_text("a file where a directory must go")
    inp = io.BytesIO(frame(b"P", "ok/a", b"1") + frame(b"P", "items/x/a.jsonl", b"2")
                     + frame(b"P", "items/spider=s/run=../../../../tmp/x/ab/ab.jsonl", b"3")
                     + frame(b"Z", "ok/b.gz", b"4") + barrier(1) + frame(b"P", "ok/c", b"5") + barrier(2))
    out = io.BytesIO()
    serve(f"file://{tmp_path}", inp, out)
    (s1, ok1, taken1, fails1, err1), second = replies(out.getvalue())
    assert (s1, ok1, taken1, err1) == (1, True, 4, "")
    assert [(kind, n) for kind, n, _ in fails1] == [(b"E", 1), (b"K", 2)]
    assert "items" in fails1[0][2] and "'..'" in fails1[1][2]
    assert second == (2, True, 5, [], "")
    store = LocalStore(f"file://{tmp_path}")
    assert store.get("ok/a") == b"1" and gzip.decompress(store.get("ok/b.gz")) == b"4" and store.get("ok/c") == b"5"
    assert not (tmp_path.parent / "tmp" / "x").exists()


def test_a_failed_syncfs_is_reported_with_the_barrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: LocalStore) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(LocalStore, "sync", broken)
    out = io.BytesIO()
    serve(f"file://{tmp_path}", io.BytesIO(frame(b"P", "ok/a", b"1") + barrier(3)), out)
    ((seq, ok, taken, fails, error),) = replies(out.getvalue())
    assert (seq, ok, taken, fails) == (3, False, 1, []) and "sync failed" in error


def test_eof_mid_frame_exits_quietly(tmp_path: Path) -> None:
    data = frame(b"P", "items/a.jsonl", b"0123456789")[:-3]
    serve(f"file://{tmp_path}", io.BytesIO(data), io.BytesIO())
    assert not (tmp_path / "items" / "a.jsonl").exists()


def test_unknown_frame_stops_the_writer(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        serve(f"file://{tmp_path}", io.BytesIO(struct.pack(">cII", b"?", 0, 0)), io.BytesIO())


def test_child_process_round_trip_and_restart_after_death(tmp_path: Path) -> None:
    async def go() -> None:
        fw = FileWriter(f"file://{tmp_path}")
        await fw.start()
        a = fw.put("items/a.jsonl", b"one\n")
        b = fw.put("raw/a.html.gz", b"<p>", gzip=True)
        await asyncio.wait_for(fw.sync(), 10)
        assert fw.result(a) is None and fw.result(b) is None
        assert (tmp_path / "items" / "a.jsonl").read_bytes() == b"one\n"
        assert fw.proc is not None
        fw.proc.kill()
        fw.proc.wait()
        lost = fw.put("items/b.jsonl", b"lost\n")  # queued to a dead writer: reported, never assumed written
        with pytest.raises(StoreError):
            await asyncio.wait_for(fw.sync(), 10)
        assert isinstance(fw.result(lost), StoreError)
        new = fw.put("items/c.jsonl", b"three\n")  # the failed barrier started a new writer
        await asyncio.wait_for(fw.sync(), 10)
        assert fw.result(new) is None
        assert (tmp_path / "items" / "c.jsonl").read_bytes() == b"three\n"
        assert not fw._errors  # every failure was asked for once and forgotten
        await fw.close()
        assert fw.proc is None

    asyncio.run(go())


def test_per_put_results_across_barriers(tmp_path: Path) -> None:
    """A put that fails is reported by the first barrier after it, which may answer after puts of the
    next batch were queued: only the failed put is an error; the batch's and the next batch's other
    puts are durable (no batch-wide retry, no epoch that throws away healthy writes)."""

    async def go() -> None:
        (tmp_path / "items").write_text("a file where a directory must go")
        fw = FileWriter(f"file://{tmp_path}")
        await fw.start()
        good = fw.put("ok/a", b"0")
        bad = fw.put("items/x/a.jsonl", b"1")  # fails in the writer
        refused = fw.put("a/../b", b"1")  # a key the store refuses
        first = asyncio.ensure_future(fw.sync())  # barrier of batch k
        await asyncio.sleep(0)
        other = fw.put("ok/b", b"2")  # a put of batch k+1, made before batch k's answer
        await asyncio.wait_for(first, 10)
        await asyncio.wait_for(fw.sync(), 10)  # batch k+1's barrier
        assert fw.result(good) is None and fw.result(other) is None
        assert isinstance(fw.result(bad), StoreError)
        assert isinstance(fw.result(refused), InvalidKeyError)
        assert (tmp_path / "ok" / "a").read_bytes() == b"0" and (tmp_path / "ok" / "b").read_bytes() == b"2"
        with pytest.raises(InvalidKeyError):
            fw.put("a/\udc80", b"")  # cannot even be framed
        await fw.close()

    asyncio.run(go())


class _Pipe:
    """A write transport that keeps what FileWriter writes (the writer's stdin)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass


def test_replies_parsed_byte_by_byte_and_a_failed_sync_fails_its_puts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker side of the protocol, fed the real serve() output one byte at a time: a put the
    writer reported is an error, a failed syncfs leaves every put since the previous barrier
    unconfirmed and fails sync(), the puts before that barrier stay durable."""

    async def go() -> None:
        fw = FileWriter(f"file://{tmp_path}")
        pipe = _Pipe()
        fw._out = pipe  # type: ignore[assignment]
        replies_ = _Replies(fw, fw._gen)
        before = fw.put("ok/a", b"1")
        t1 = asyncio.ensure_future(fw.sync())
        await asyncio.sleep(0)
        bad = fw.put("x/../y", b"2")
        after = fw.put("ok/b", b"3")
        t2 = asyncio.ensure_future(fw.sync())
        await asyncio.sleep(0)
        calls = []

        def flaky(self: LocalStore) -> None:
            calls.append(1)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(LocalStore, "sync", flaky)
        out = io.BytesIO()
        serve(f"file://{tmp_path}", io.BytesIO(bytes(pipe.data)), out)
        for i in range(len(out.getvalue())):
            replies_.data_received(out.getvalue()[i:i + 1])
        await asyncio.wait_for(t1, 5)
        with pytest.raises(StoreError, match="No space left"):
            await asyncio.wait_for(t2, 5)
        assert fw.result(before) is None
        assert isinstance(fw.result(bad), InvalidKeyError)
        err = fw.result(after)
        assert isinstance(err, StoreError) and "No space left" in str(err)
        assert not fw._errors

    asyncio.run(go())

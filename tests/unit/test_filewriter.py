"""The local store's writer process: frames in order, failures reported at the barrier, restart."""

from __future__ import annotations

import asyncio
import gzip
import io
import struct
from pathlib import Path

import pytest

from scraper.filewriter import _REP, _REQ, FileWriter, serve
from scraper.store import LocalStore, StoreError


def frame(op: bytes, key: str, data: bytes = b"") -> bytes:
    k = key.encode()
    return _REQ.pack(op, len(k), len(data)) + k + data


def barrier(seq: int) -> bytes:
    return _REQ.pack(b"S", seq, 0)


def replies(raw: bytes) -> list[tuple[int, bool, str]]:
    out = []
    while raw:
        seq, ok, n = _REP.unpack_from(raw)
        out.append((seq, bool(ok), raw[_REP.size:_REP.size + n].decode()))
        raw = raw[_REP.size + n:]
    return out


def test_serve_writes_puts_and_answers_each_barrier(tmp_path: Path) -> None:
    inp = io.BytesIO(frame(b"P", "items/a.jsonl", b'{"x":1}\n') + frame(b"Z", "raw/a.html.gz", b"<html>")
                     + barrier(7) + frame(b"P", "items/b.jsonl", b"b") + barrier(8))
    out = io.BytesIO()
    serve(f"file://{tmp_path}", inp, out)
    assert replies(out.getvalue()) == [(7, True, ""), (8, True, "")]
    store = LocalStore(f"file://{tmp_path}")
    assert store.get("items/a.jsonl") == b'{"x":1}\n'
    assert gzip.decompress(store.get("raw/a.html.gz")) == b"<html>"
    assert store.get("items/b.jsonl") == b"b"


def test_a_failed_put_fails_the_next_barrier_only(tmp_path: Path) -> None:
    (tmp_path / "items").write_text("a file where a directory must go")
    inp = io.BytesIO(frame(b"P", "items/x/a.jsonl", b"1") + barrier(1) + frame(b"P", "ok/b", b"2") + barrier(2))
    out = io.BytesIO()
    serve(f"file://{tmp_path}", inp, out)
    (s1, ok1, msg1), (s2, ok2, msg2) = replies(out.getvalue())
    assert (s1, ok1) == (1, False) and "items" in msg1
    assert (s2, ok2, msg2) == (2, True, "")


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
        fw.put("items/a.jsonl", b"one\n")
        fw.put("raw/a.html.gz", b"<p>", gzip=True)
        await asyncio.wait_for(fw.sync(), 10)
        assert (tmp_path / "items" / "a.jsonl").read_bytes() == b"one\n"
        assert fw.proc is not None
        fw.proc.kill()
        fw.proc.wait()
        lost = fw.put("items/b.jsonl", b"lost\n")  # queued to a dead writer: reported, never assumed written
        with pytest.raises(StoreError):
            await asyncio.wait_for(fw.sync(), 10)
        new = fw.put("items/c.jsonl", b"three\n")  # the failed barrier started a new writer
        gen = await asyncio.wait_for(fw.sync(), 10)
        # the barrier vouches for its own writer's puts only: the runtime redoes the lost one
        assert new == gen and lost != gen
        assert (tmp_path / "items" / "c.jsonl").read_bytes() == b"three\n"
        await fw.close()
        assert fw.proc is None

    asyncio.run(go())


def test_a_barrier_never_vouches_for_a_put_made_before_a_failed_barrier(tmp_path: Path) -> None:
    """A put that fails is reported by the first barrier after it, which may belong to another batch;
    the writer then forgets the error. Puts made before that failure answer are never confirmed by a
    later barrier (the runtime retries them), so the failed one cannot be acknowledged by accident."""

    async def go() -> None:
        (tmp_path / "items").write_text("a file where a directory must go")
        fw = FileWriter(f"file://{tmp_path}")
        await fw.start()
        bad = fw.put("items/x/a.jsonl", b"1")  # fails in the writer
        first = asyncio.ensure_future(fw.sync())  # barrier of batch k: covers the bad put
        await asyncio.sleep(0)
        other = fw.put("ok/b", b"2")  # a put of batch k+1, made before batch k's answer
        with pytest.raises(StoreError):
            await asyncio.wait_for(first, 10)
        epoch = await asyncio.wait_for(fw.sync(), 10)  # batch k+1's barrier succeeds...
        assert bad != epoch and other != epoch  # ...but vouches for neither put: both are redone
        fresh = fw.put("ok/c", b"3")
        assert await asyncio.wait_for(fw.sync(), 10) == fresh
        await fw.close()

    asyncio.run(go())

"""LocalStore contract: atomic puts, create-if-absent, sorted listing, key hygiene."""

from __future__ import annotations

import gzip
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scraper.store.backends import (
    DEFAULT_STORE_URI,
    InvalidKeyError,
    LocalStore,
    ObjectStore,
    S3Store,
    StoreError,
    gzip_bytes,
    open_store,
)

KEY = "items/spider=books/run=2026/ab/ab12cd34ef56ab78.jsonl"


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path}/data")


def test_open_store_file_absolute(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}")
    assert isinstance(s, LocalStore)
    assert s.uri == f"file://{tmp_path}"
    assert s.describe() == str(tmp_path)
    assert s.describe(KEY) == str(tmp_path / KEY)


def test_open_store_relative_resolved_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = open_store(DEFAULT_STORE_URI)
    assert s.describe() == str(tmp_path / "data")
    monkeypatch.chdir("/")
    s.put("a/b.txt", b"x")  # a later chdir does not move the store
    assert (tmp_path / "data" / "a" / "b.txt").read_bytes() == b"x"


def test_open_store_localhost_form(tmp_path: Path) -> None:
    assert open_store(f"file://localhost{tmp_path}").describe() == str(tmp_path)


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://x", "/tmp/data", "data", ""])
def test_open_store_unknown_scheme(uri: str) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket/prefix"):
        open_store(uri)


def test_open_store_unknown_scheme_hides_credentials() -> None:
    with pytest.raises(ValueError) as ei:
        open_store("gs://user:hunter2@bucket/x")
    assert "hunter2" not in str(ei.value)


def test_open_store_s3_returns_s3store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s = open_store("s3://bucket/some/prefix/")
    assert isinstance(s, S3Store)
    assert s.describe(KEY) == f"s3://bucket/some/prefix/{KEY}"
    assert s.describe() == "s3://bucket/some/prefix"


def test_s3_uri_with_credentials_rejected_without_echoing_them() -> None:
    with pytest.raises(ValueError) as ei:
        open_store("s3://AKIAXXX:topsecret@bucket/p")
    assert "topsecret" not in str(ei.value)
    assert "AWS_ACCESS_KEY_ID" in str(ei.value)


def test_put_get_overwrite(store: ObjectStore) -> None:
    store.put(KEY, b"one")
    assert store.get(KEY) == b"one"
    store.put(KEY, b"two", content_type="application/x-ndjson")
    assert store.get(KEY) == b"two"
    assert store.exists(KEY)


def test_get_missing_is_keyerror(store: ObjectStore) -> None:
    with pytest.raises(KeyError) as ei:
        store.get(KEY)
    assert ei.value.args == (KEY,)
    assert not store.exists(KEY)
    store.put(KEY, b"x")
    # a "directory" is not an object
    with pytest.raises(KeyError):
        store.get("items/spider=books")
    assert not store.exists("items/spider=books")


def test_put_if_absent(store: ObjectStore) -> None:
    assert store.put_if_absent(KEY, b"first") is True
    assert store.put_if_absent(KEY, b"second") is False
    assert store.get(KEY) == b"first"


def test_put_if_absent_concurrent_single_winner(store: ObjectStore) -> None:
    barrier = threading.Barrier(16)

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.put_if_absent(KEY, f"writer-{i}".encode() * 1000)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.get(KEY) == f"writer-{winner}".encode() * 1000
    assert list(store.list()) == [KEY]  # no temp files left behind


def test_readers_never_see_partial_objects(store: ObjectStore) -> None:
    a, b = b"a" * 2_000_000, b"b" * 2_000_000
    store.put(KEY, a)
    stop = threading.Event()
    seen: set[bytes] = set()

    def reader() -> None:
        while not stop.is_set():
            data = store.get(KEY)
            seen.add(data[:1] + str(len(data)).encode())

    t = threading.Thread(target=reader)
    t.start()
    for i in range(20):
        store.put(KEY, a if i % 2 else b)
    stop.set()
    t.join()
    assert seen <= {b"a2000000", b"b2000000"}


def test_list_sorted_prefix_and_relative(store: ObjectStore) -> None:
    keys = [
        "runs/spider=books/run=1/manifest.json",
        "items/spider=books/run=1/ff/ff00.jsonl",
        "items/spider=books/run=1/0a/0a11.jsonl",
        "items/spider=bookshop/run=1/12/1234.jsonl",
        "items/spider=quotes/run=1/ab/ab99.jsonl",
        "top.txt",
    ]
    for k in keys:
        store.put(k, b"x")
    assert list(store.list()) == sorted(keys)
    assert list(store.list("items/spider=books/")) == [
        "items/spider=books/run=1/0a/0a11.jsonl",
        "items/spider=books/run=1/ff/ff00.jsonl",
    ]
    # string prefix, not just directory prefix
    assert list(store.list("items/spider=books")) == [
        "items/spider=books/run=1/0a/0a11.jsonl",
        "items/spider=books/run=1/ff/ff00.jsonl",
        "items/spider=bookshop/run=1/12/1234.jsonl",
    ]
    assert list(store.list("items/spider=nope/")) == []
    assert list(store.list("t")) == ["top.txt"]


def test_list_on_missing_root_is_empty(tmp_path: Path) -> None:
    assert list(open_store(f"file://{tmp_path}/never-created").list()) == []


def test_list_hides_temp_files(store: ObjectStore, tmp_path: Path) -> None:
    store.put(KEY, b"x")
    # simulate a writer killed mid-put
    (Path(store.describe(KEY)).parent / ".fleet-tmp-ab12.jsonl.deadbeef").write_bytes(b"par")
    assert list(store.list()) == [KEY]


def test_delete(store: ObjectStore) -> None:
    store.put(KEY, b"x")
    store.delete(KEY)
    assert not store.exists(KEY)
    store.delete(KEY)  # missing is fine


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape",
        "items/../../x",
        "a//b",
        "./a",
        "a/./b",
        "a\\b",
        ".fleet-tmp-x",
        "a/.fleet-tmp-y",
        "items/spider=s/run=../../../../tmp/x/ab/ab.jsonl",
        "a/\udc80",  # a lone surrogate (JSON "\udc80" in a queue entry): no backend can store it
        "a/" + "x" * 256,  # one segment over the usual file-name limit
        "/".join(["abcdefgh"] * 120),  # over S3's 1024-byte key limit
    ],
)
def test_bad_keys_rejected(store: ObjectStore, tmp_path: Path, key: str) -> None:
    """Every refused key raises InvalidKeyError (a ValueError): the key's fault, never the store's,
    so the runtime fails only its request. Nothing is created anywhere."""
    before = sorted(p for p in tmp_path.rglob("*"))
    for op in (
        lambda: store.put(key, b"x"),
        lambda: store.put_if_absent(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(InvalidKeyError):
            op()
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert issubclass(InvalidKeyError, ValueError) and not issubclass(InvalidKeyError, StoreError)


def test_refused_key_message_is_bounded(store: ObjectStore) -> None:
    with pytest.raises(InvalidKeyError) as ei:
        store.put("../" + "x" * 100_000, b"x")
    assert len(str(ei.value)) < 400


def test_bad_list_prefix_rejected(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        list(store.list("../x"))
    with pytest.raises(ValueError):
        list(store.list("/abs"))


def test_backend_failure_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a dir")
    s = open_store(f"file://{tmp_path}/file")
    with pytest.raises(StoreError) as ei:
        s.put("a/b", b"x")
    assert str(tmp_path / "file") in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied_is_store_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    os.chmod(root, 0o500)
    try:
        s = open_store(f"file://{root}")
        with pytest.raises(StoreError, match="put"):
            s.put("x", b"1")
        with pytest.raises(StoreError, match="put_if_absent"):
            s.put_if_absent("x", b"1")
    finally:
        os.chmod(root, 0o700)


def test_gzip_bytes_deterministic_and_valid() -> None:
    body = b"<html>" + b"hello world " * 1000 + b"</html>"
    a, b = gzip_bytes(body), gzip_bytes(body)
    assert a == b
    assert a[:2] == b"\x1f\x8b"
    assert a[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert gzip.decompress(a) == body
    assert gzip.decompress(gzip_bytes(b"")) == b""
    assert len(a) < len(body)


def test_gzip_identical_bodies_give_identical_objects(store: ObjectStore) -> None:
    store.put("raw/a.html.gz", gzip_bytes(b"<p>x</p>"))
    assert store.put_if_absent("raw/b.html.gz", gzip_bytes(b"<p>x</p>"))
    assert store.get("raw/a.html.gz") == store.get("raw/b.html.gz")


def test_a_store_removed_and_made_again_takes_writes_again(tmp_path: Path) -> None:
    """Directories are cached after their first put; if the store goes away (an outage) and comes
    back empty, puts there must create them again, or the worker never sees the store recover."""
    import shutil

    s = open_store(f"file://{tmp_path}/data")
    s.put("a/b/one", b"1")
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").write_text("a file where the store root was")
    with pytest.raises(StoreError):
        s.put("a/b/two", b"2")
    (tmp_path / "data").unlink()
    s.put("a/b/two", b"2")
    assert s.get("a/b/two") == b"2"

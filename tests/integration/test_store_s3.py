"""S3Store against a real HTTP S3 endpoint (moto server on loopback)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto.server import ThreadedMotoServer

from scraper.store.backends import S3Store, StoreError, gzip_bytes, open_store

pytestmark = pytest.mark.integration

KEY = "items/spider=books/run=2026/ab/ab12cd34ef56ab78.jsonl"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("FLEET_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def bucket(aws_env: str) -> str:
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env).create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(bucket: str) -> S3Store:
    s = open_store(f"s3://{bucket}/prefix/sub")
    assert isinstance(s, S3Store)
    return s


def raw_keys(bucket: str, endpoint: str) -> list[str]:
    resp = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in resp.get("Contents", [])]


def test_put_get_overwrite_and_layout(store: S3Store, bucket: str, aws_env: str) -> None:
    store.put(KEY, b"one", content_type="application/x-ndjson")
    assert store.get(KEY) == b"one"
    store.put(KEY, b"two")
    assert store.get(KEY) == b"two"
    assert raw_keys(bucket, aws_env) == [f"prefix/sub/{KEY}"]
    assert store.describe(KEY) == f"s3://{bucket}/prefix/sub/{KEY}"
    assert store.uri == f"s3://{bucket}/prefix/sub"


def test_content_type_is_recorded(store: S3Store, bucket: str, aws_env: str) -> None:
    store.put("raw/x.html.gz", gzip_bytes(b"<p/>"), content_type="application/gzip")
    head = boto3.client("s3", endpoint_url=aws_env).head_object(
        Bucket=bucket, Key="prefix/sub/raw/x.html.gz"
    )
    assert head["ContentType"] == "application/gzip"


def test_get_missing_keyerror_and_exists(store: S3Store) -> None:
    with pytest.raises(KeyError) as ei:
        store.get(KEY)
    assert ei.value.args == (KEY,)
    assert store.exists(KEY) is False
    store.put(KEY, b"x")
    assert store.exists(KEY) is True


def test_put_if_absent(store: S3Store) -> None:
    assert store.put_if_absent(KEY, b"first") is True
    assert store.put_if_absent(KEY, b"second") is False
    assert store.get(KEY) == b"first"


def test_put_if_absent_concurrent_single_winner(store: S3Store) -> None:
    barrier = threading.Barrier(8)

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.put_if_absent(KEY, f"w{i}".encode())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(True) == 1
    assert store.get(KEY) == f"w{results.index(True)}".encode()


def test_list_sorted_relative_and_scoped_to_prefix(
    store: S3Store, bucket: str, aws_env: str
) -> None:
    keys = [
        "runs/spider=books/run=1/manifest.json",
        "items/spider=books/run=1/ff/ff00.jsonl",
        "items/spider=books/run=1/0a/0a11.jsonl",
        "items/spider=bookshop/run=1/12/1234.jsonl",
    ]
    for k in keys:
        store.put(k, b"x")
    # objects outside the store prefix (including a sibling sharing the string prefix)
    raw = boto3.client("s3", endpoint_url=aws_env)
    raw.put_object(Bucket=bucket, Key="prefix/sub2/items/x", Body=b"no")
    raw.put_object(Bucket=bucket, Key="other/items/x", Body=b"no")
    assert list(store.list()) == sorted(keys)
    assert list(store.list("items/spider=books/")) == [
        "items/spider=books/run=1/0a/0a11.jsonl",
        "items/spider=books/run=1/ff/ff00.jsonl",
    ]
    assert list(store.list("items/spider=books")) == sorted(keys)[:3]
    assert list(store.list("nothing/")) == []


def test_list_paginates(bucket: str) -> None:
    s = open_store(f"s3://{bucket}")
    keys = [f"k/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s.put(k, b""), keys))
    assert list(s.list("k/")) == keys


def test_bucket_root_store(bucket: str) -> None:
    s = open_store(f"s3://{bucket}")
    s.put("a/b", b"1")
    assert list(s.list()) == ["a/b"]
    assert s.describe("a/b") == f"s3://{bucket}/a/b"


def test_delete(store: S3Store) -> None:
    store.put(KEY, b"x")
    store.delete(KEY)
    assert not store.exists(KEY)
    store.delete(KEY)  # missing is fine


def test_bad_keys_rejected(store: S3Store) -> None:
    for key in ("", "/abs", "a/../b", ".."):
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_missing_bucket_is_store_error_without_secret(aws_env: str) -> None:
    s = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p")
    with pytest.raises(StoreError) as ei:
        s.put(KEY, b"x")
    msg = str(ei.value)
    assert "NoSuchBucket" in msg
    assert s.describe(KEY) in msg
    assert "testing-secret-value" not in msg
    with pytest.raises(StoreError):
        list(s.list())


def test_endpoint_down_is_store_error(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s = open_store("s3://bucket/p")
    with pytest.raises(StoreError) as ei:
        s.get(KEY)
    assert "s3://bucket/p/" in str(ei.value)
    assert "testing-secret-value" not in str(ei.value)


def test_fleet_s3_endpoint_url_fallback(
    bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("FLEET_S3_ENDPOINT_URL", aws_env)
    s = open_store(f"s3://{bucket}/fb")
    s.put("x", b"1")
    assert s.get("x") == b"1"


def test_thread_safe_mixed_ops(store: S3Store) -> None:
    def work(i: int) -> bytes:
        k = f"t/{i:03d}"
        store.put(k, str(i).encode())
        assert store.exists(k)
        return store.get(k)

    with ThreadPoolExecutor(32) as pool:
        out = list(pool.map(work, range(100)))
    assert out == [str(i).encode() for i in range(100)]
    assert len(list(store.list("t/"))) == 100

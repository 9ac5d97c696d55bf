"""The S3 object store (``s3://bucket/prefix``): boto3 puts, conditional puts with ``IfNoneMatch``,
paginated listings; errors become :class:`StoreError` with the secret scrubbed."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

from scraper.store.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectStore,
    StoreError,
    scrub_secrets,
    strip_userinfo,
    validate_key,
    validate_prefix,
)

__all__ = ["S3Store", "parse_s3_uri"]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of an ``s3://bucket/prefix`` URI, or ValueError saying what is wrong. No client is
    made: ``fleet run`` checks FLEET_STORE with this before it seeds (scraper.cli.common.check_store)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise ValueError(f"not an s3:// URI: {strip_userinfo(uri)!r}")
    if "@" in parts.netloc:
        raise ValueError(
            f"credentials in the store URI are not supported ({strip_userinfo(uri)!r}); "
            "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile"
        )
    if not parts.netloc:
        raise ValueError(f"s3 URI has no bucket: {uri!r} (expected s3://bucket/prefix)")
    if parts.query or parts.fragment:
        raise ValueError(f"s3 URI may not carry a query or fragment: {uri!r}")
    prefix = parts.path.strip("/")
    if prefix:
        validate_key(prefix)
    return parts.netloc, prefix


class S3Store(ObjectStore):
    """Objects in an S3 bucket under an optional prefix (also MinIO, moto, R2...).

    Endpoint comes from ``AWS_ENDPOINT_URL`` or ``FLEET_S3_ENDPOINT_URL``; credentials and
    region come from the standard AWS chain, never from the URI (a URI gets logged).
    One boto3 client per store: clients are thread-safe, and a private Session avoids the
    non-thread-safe default session.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        self._client = self._make_client()

    def _make_client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("FLEET_S3_ENDPOINT_URL")
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,
            connect_timeout=5,
            read_timeout=30,
        )
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=endpoint or None, config=config)

    # -- helpers

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, op: str, key: str, exc: Exception) -> NoReturn:
        where = self.describe(key)
        raise StoreError(f"s3 store: {op} {where} failed: {scrub_secrets(_describe_exc(exc))}") from exc

    # -- API

    def put(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE, durable: bool = True) -> None:
        """PutObject is atomic on S3: readers see the old or the new object, never a mix."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            self._fail("put", key, exc)

    def put_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
        """Conditional PutObject (``If-None-Match: *``): 412 means another writer won.

        S3 answers 409 ConditionalRequestConflict while a competing conditional write is in
        flight and asks the client to retry, so we retry a few times before giving up.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        for attempt in range(5):
            try:
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=data,
                    ContentType=content_type,
                    IfNoneMatch="*",
                )
                return True
            except ClientError as exc:
                status, code = _status_code(exc)
                if status == 412 or code == "PreconditionFailed":
                    return False
                if (status == 409 or code == "ConditionalRequestConflict") and attempt < 4:
                    time.sleep(0.05 * 2**attempt)
                    continue
                self._fail("put_if_absent", key, exc)
            except BotoCoreError as exc:
                self._fail("put_if_absent", key, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=full)
            return resp["Body"].read()
        except ClientError as exc:
            status, code = _status_code(exc)
            if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(key) from None
            self._fail("get", key, exc)
        except BotoCoreError as exc:
            self._fail("get", key, exc)

    def exists(self, key: str) -> bool:
        """HEAD the object. Note S3 answers 403 (not 404) for a missing key when the
        caller lacks s3:ListBucket; that is surfaced as StoreError, not as False."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
            return True
        except ClientError as exc:
            status, code = _status_code(exc)
            if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
                return False
            self._fail("exists", key, exc)
        except BotoCoreError as exc:
            self._fail("exists", key, exc)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Stream ListObjectsV2 pages; S3 returns keys in UTF-8 binary order already."""
        from botocore.exceptions import BotoCoreError, ClientError

        validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                for obj in page.get("Contents", []):
                    full = obj.get("Key", "")
                    if full.startswith(root):
                        yield full[len(root) :]
        except (BotoCoreError, ClientError) as exc:
            self._fail("list", prefix, exc)

    def put_file(self, key: str, path: Path, *, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """boto3's managed upload: multipart for large files, streamed from disk; the object appears
        only when the upload completes (atomic like PutObject)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self._client.upload_file(str(path), self.bucket, full, ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            self._fail("put", key, exc)

    def delete(self, key: str) -> None:
        """DeleteObject is already idempotent on S3 (204 for missing keys)."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            status, code = _status_code(exc)
            if status == 404 or code == "NoSuchKey":
                return
            self._fail("delete", key, exc)
        except BotoCoreError as exc:
            self._fail("delete", key, exc)

    def describe(self, key: str = "") -> str:
        parts = [p for p in (self.prefix, key) if p]
        return f"s3://{self.bucket}/" + "/".join(parts) if parts else f"s3://{self.bucket}"


def _status_code(exc: Exception) -> tuple[int | None, str]:
    """(HTTP status, error code) of a botocore ClientError."""
    resp = getattr(exc, "response", None) or {}
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(resp.get("Error", {}).get("Code", ""))
    return (int(status) if status is not None else None), code


def _describe_exc(exc: Exception) -> str:
    status, code = _status_code(exc)
    if code:
        msg = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return f"{code} (HTTP {status}): {msg}" if msg else f"{code} (HTTP {status})"
    return f"{type(exc).__name__}: {exc}"

"""Object store abstraction: one sync API over a local directory and S3.

The worker writes items, raw bodies and evidence, and ``fleet export`` its exports, through this
module (docs/architecture.md, "Object store layout"). The API is synchronous on purpose: callers run
it in a thread pool, so every implementation here is thread-safe and keeps no per-call state on the
instance.

The guarantee the rest of the fleet builds on: ``put`` is atomic: a reader sees either the old
object or the whole new one, never a prefix of it (a worker can be SIGKILLed mid-write). "Nothing
written twice" does not come from the store: object keys are deterministic (scraper.store.objects), so a
redelivered request overwrites its own object with the same records, and DONE in Redis settles which
delivery counts.

``put_if_absent`` (a compare-and-set: exactly one of several concurrent writers of the same key wins)
is offered for callers that need one winner; the worker does not use it, since an overwrite of the same
key is already idempotent and a conditional put would cost a round trip per object on S3.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import itertools
import os
import shutil
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = [
    "DEFAULT_STORE_URI",
    "InvalidKeyError",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "gzip_bytes",
    "open_store",
    "scrub_secrets",
]

#: What callers use when FLEET_STORE is unset (docs/architecture.md, "Configuration").
DEFAULT_STORE_URI = "file://./data"

#: Temp files for atomic local writes carry this prefix; ``list`` hides them and keys may
#: not use it, so a half-written temp file can never be mistaken for an object.
_TMP_PREFIX = ".fleet-tmp-"

_DEFAULT_CONTENT_TYPE = "application/octet-stream"


class StoreError(Exception):
    """Any backend failure (I/O error, S3 error, no credentials, endpoint down).

    Wraps botocore/OSError so callers only need one ``except``. The message names the
    operation and the location but never credentials.
    """


class InvalidKeyError(ValueError):
    """The key itself cannot be an object key (``..``, empty segment, absolute, NUL...).

    Why a type of its own: it says nothing about the store's health. The runtime fails only the
    request whose key it is (DLQ, never a retry: the same key fails the same way) and keeps
    acknowledging the others, where a :class:`StoreError` may mean the store is down. A ValueError
    subclass, so code that already rejected bad keys as ValueError keeps working.
    """


#: S3's limit on a key (UTF-8 bytes), and the usual file-name limit for one segment on disk.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


def _show(key: str) -> str:
    """The key for an error message: a hostile run name may be megabytes long."""
    return repr(key[:160] + "...") if len(key) > 160 else repr(key)


def _validate_key(key: str) -> str:
    """Reject keys that could escape the store root or alias another key.

    ``..`` would let a URL-derived key write outside the root on disk; empty or ``.``
    segments would make two spellings map to one file locally but two objects on S3, so
    the backends would disagree. Keys are built by our own code, so being strict is cheap.
    A key one backend cannot hold (too long, not UTF-8) is refused here too, so that it fails
    as this key's fault (:class:`InvalidKeyError`) on every backend, never as a store error.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("object key must be a non-empty string")
    if key.startswith("/") or key.startswith("\\") or (len(key) > 1 and key[1] == ":"):
        raise InvalidKeyError(f"object key must be relative, got {_show(key)}")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"object key may not contain backslashes or NUL bytes: {_show(key)}")
    if not key.isascii():
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKeyError(f"object key is not valid UTF-8 (lone surrogate): {_show(key)}") from None
    else:
        size = len(key)
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_BYTES} bytes: {_show(key)}")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidKeyError(
                f"object key has an empty, '.' or '..' segment: {_show(key)} "
                "(keys look like 'items/spider=books/run=.../ab/ab12.jsonl')"
            )
        if seg.startswith(_TMP_PREFIX):
            raise InvalidKeyError(f"object key segment may not start with {_TMP_PREFIX!r}: {_show(key)}")
        if len(seg) > MAX_SEGMENT_BYTES // 4 and len(seg.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(f"object key segment is longer than {MAX_SEGMENT_BYTES} bytes: {_show(key)}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix is a plain string prefix (may end in '/' or mid-segment)."""
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ValueError(f"list prefix must be relative and free of '..': {prefix!r}")
    return prefix


class ObjectStore(abc.ABC):
    """A flat namespace of keys -> bytes, rooted at ``uri``."""

    #: The URI this store was opened with, credentials stripped (safe to log).
    uri: str

    @abc.abstractmethod
    def put(
        self, key: str, data: bytes, *, content_type: str = _DEFAULT_CONTENT_TYPE, durable: bool = True
    ) -> None:
        """Write ``data`` at ``key``, replacing any existing object, atomically."""

    #: True when ``put(durable=False)`` + one :meth:`sync` per batch is cheaper than a sync per put.
    group_sync: bool = False

    def sync(self) -> None:
        """Make every earlier ``put(durable=False)`` durable (group commit). Default: nothing to do."""
        return None

    @abc.abstractmethod
    def put_if_absent(
        self, key: str, data: bytes, *, content_type: str = _DEFAULT_CONTENT_TYPE
    ) -> bool:
        """Write only if ``key`` does not exist. True if written, False if it existed."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; ``KeyError(key)`` if it does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True if an object is stored at ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix`` (relative to the store root), sorted."""

    def scan(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix`` in no particular order, without holding them all.

        For ``fleet export`` of millions of objects: :meth:`list` sorts, which on disk means holding every
        key first. Default: :meth:`list` (S3 already streams its pages)."""
        return self.list(prefix)

    def put_file(self, key: str, path: Path, *, content_type: str = _DEFAULT_CONTENT_TYPE) -> None:
        """Write the file at ``path`` to ``key``, atomically like :meth:`put`, without reading it into memory
        where the backend can stream (an export part may be hundreds of MB)."""
        self.put(key, Path(path).read_bytes(), content_type=content_type)

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error (deletes are retried)."""

    @abc.abstractmethod
    def describe(self, key: str = "") -> str:
        """Human-readable location of ``key`` (or of the root), for logs and CLI output."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# --------------------------------------------------------------------------- local


class LocalStore(ObjectStore):
    """Objects as files under a directory; the embedded default (``file://./data``).

    Atomicity comes from writing a temp file in the destination directory, fsyncing it and
    ``os.replace``-ing it into place (rename is atomic within one filesystem);
    ``put_if_absent`` uses ``os.link`` instead, which fails if the target exists and so is
    an atomic create-if-absent across threads *and* processes.
    """

    group_sync = True

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = _parse_file_uri(uri)
        self._dirs: set[Path] = set()
        self._seq = itertools.count()

    def sync(self) -> None:
        """One syncfs(2) of the store's filesystem: data and directory entries of every object
        written since, in one flush (group commit) instead of two fsyncs per object."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    # -- helpers

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_validate_key(key).split("/"))

    def _fail(self, op: str, where: Path | str, exc: OSError) -> NoReturn:
        raise StoreError(f"local store: {op} {where} failed: {exc.strerror or exc}") from exc

    def _write_temp(self, path: Path, data: bytes, durable: bool = True) -> Path:
        """Write ``data`` to a fsynced temp file next to ``path`` and return its path."""
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}-{next(self._seq)}-{_RUN_TAG}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            # the directory went away after it was cached (the store was removed and made again during
            # an outage): without this, every later put there, and the outage probe, failed for good
            self._dirs.discard(path.parent)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quiet(tmp)
            raise
        os.close(fd)
        return tmp

    # -- API

    def put(
        self, key: str, data: bytes, *, content_type: str = _DEFAULT_CONTENT_TYPE, durable: bool = True
    ) -> None:
        """Overwrite atomically; ``content_type`` is not recorded on disk."""
        path = self._path(key)
        try:
            # durable=False (evidence snapshots): still atomic (rename), but no fsync — an OS crash
            # may lose it, which costs a replay snapshot, never data or an ack
            tmp = self._write_temp(path, data, durable)
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quiet(tmp)
                raise
            if durable:
                _fsync_dir(path.parent)
        except OSError as exc:
            self._fail("put", path, exc)

    def put_if_absent(
        self, key: str, data: bytes, *, content_type: str = _DEFAULT_CONTENT_TYPE
    ) -> bool:
        """Create-if-absent via ``os.link`` (fails with EEXIST, never overwrites)."""
        path = self._path(key)
        try:
            if path.exists():  # cheap early-out; the link below is the real check
                return False
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                _unlink_quiet(tmp)
            _fsync_dir(path.parent)
            return True
        except OSError as exc:
            self._fail("put_if_absent", path, exc)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            self._fail("get", path, exc)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return path.is_file()
        except OSError as exc:
            self._fail("exists", path, exc)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Walk only the directory the prefix points into, then filter and sort.

        The result is materialised before yielding so a concurrent writer cannot make the
        walk fail half-way; keys sort by code point, which equals S3's UTF-8 byte order.
        """
        _validate_prefix(prefix)
        dir_part = prefix.rpartition("/")[0]
        start = self.root.joinpath(*dir_part.split("/")) if dir_part else self.root
        keys: list[str] = []
        errors: list[OSError] = []

        def onerror(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                errors.append(exc)

        for dirpath, dirnames, filenames in os.walk(start, onerror=onerror):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = base + name
                if key.startswith(prefix):
                    keys.append(key)
        if errors:
            self._fail("list", start, errors[0])
        keys.sort()
        yield from keys

    def scan(self, prefix: str = "") -> Iterator[str]:
        """Walk as :meth:`list` does but yield as it goes, unsorted (bounded memory for huge runs)."""
        _validate_prefix(prefix)
        dir_part = prefix.rpartition("/")[0]
        start = self.root.joinpath(*dir_part.split("/")) if dir_part else self.root
        errors: list[OSError] = []

        def onerror(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                errors.append(exc)

        for dirpath, dirnames, filenames in os.walk(start, onerror=onerror):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            for name in filenames:
                if not name.startswith(_TMP_PREFIX) and (key := base + name).startswith(prefix):
                    yield key
            if errors:
                self._fail("list", start, errors[0])

    def put_file(self, key: str, path: Path, *, content_type: str = _DEFAULT_CONTENT_TYPE) -> None:
        """Copy into a temp file beside the target, fsync, rename: atomic and streamed."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{_TMP_PREFIX}{target.name}.{os.getpid()}-{next(self._seq)}-{_RUN_TAG}")
            try:
                shutil.copyfile(path, tmp)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)
            except BaseException:
                _unlink_quiet(tmp)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            self._fail("put", target, exc)

    def delete(self, key: str) -> None:
        """Unlink the file; empty parent directories are left alone.

        Removing them would race with a concurrent ``put`` that just created the directory.
        """
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._fail("delete", path, exc)

    def describe(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)


def _parse_file_uri(uri: str) -> Path:
    """``file:///abs``, ``file://localhost/abs`` or ``file://./rel`` (relative to cwd now).

    Relative paths are resolved once, at open time, so a later ``chdir`` does not move the
    store. The path is taken literally (no percent-decoding): these URIs are typed by people.
    """
    rest = uri[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest:
        raise ValueError(f"file store URI has no path: {uri!r} (try file://./data)")
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return Path(os.path.normpath(path))


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
        fn.argtypes = [ctypes.c_int]
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()
_RUN_TAG = uuid.uuid4().hex[:8]


def _fsync_dir(path: Path) -> None:
    """Persist the directory entry so a rename/link survives power loss (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- S3


class S3Store(ObjectStore):
    """Objects in an S3 bucket under an optional prefix (also MinIO, moto, R2...).

    Endpoint comes from ``AWS_ENDPOINT_URL`` or ``FLEET_S3_ENDPOINT_URL``; credentials and
    region come from the standard AWS chain, never from the URI (a URI gets logged).
    One boto3 client per store: clients are thread-safe, and a private Session avoids the
    non-thread-safe default session.
    """

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "s3":
            raise ValueError(f"not an s3:// URI: {_strip_userinfo(uri)!r}")
        if "@" in parts.netloc:
            raise ValueError(
                f"credentials in the store URI are not supported ({_strip_userinfo(uri)!r}); "
                "use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile"
            )
        if not parts.netloc:
            raise ValueError(f"s3 URI has no bucket: {uri!r} (expected s3://bucket/prefix)")
        if parts.query or parts.fragment:
            raise ValueError(f"s3 URI may not carry a query or fragment: {uri!r}")
        self.uri = uri
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        if self.prefix:
            _validate_key(self.prefix)
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
        _validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, op: str, key: str, exc: Exception) -> NoReturn:
        where = self.describe(key)
        raise StoreError(f"s3 store: {op} {where} failed: {scrub_secrets(_describe_exc(exc))}") from exc

    # -- API

    def put(
        self, key: str, data: bytes, *, content_type: str = _DEFAULT_CONTENT_TYPE, durable: bool = True
    ) -> None:
        """PutObject is atomic on S3: readers see the old or the new object, never a mix."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._full(key)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            self._fail("put", key, exc)

    def put_if_absent(
        self, key: str, data: bytes, *, content_type: str = _DEFAULT_CONTENT_TYPE
    ) -> bool:
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

        _validate_prefix(prefix)
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

    def put_file(self, key: str, path: Path, *, content_type: str = _DEFAULT_CONTENT_TYPE) -> None:
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


def scrub_secrets(text: str) -> str:
    """Belt and braces: never let a secret from the environment reach a log line."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _strip_userinfo(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# --------------------------------------------------------------------------- factory


def open_store(uri: str) -> ObjectStore:
    """Open the store named by ``FLEET_STORE``-style URI (``file://...`` or ``s3://...``)."""
    if not uri:
        raise ValueError(f"empty store URI; expected s3://bucket/prefix or {DEFAULT_STORE_URI}")
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme == "file":
        return LocalStore(uri)
    if scheme == "s3":
        return S3Store(uri)
    raise ValueError(
        f"unsupported store URI {_strip_userinfo(uri)!r}: expected s3://bucket/prefix, "
        f"file:///absolute/path or file://./relative/path (default {DEFAULT_STORE_URI})"
    )


# --------------------------------------------------------------------------- gzip


def gzip_bytes(data: bytes, *, level: int = 6) -> bytes:
    """Gzip with a fixed header (mtime=0, no filename, OS=255) so equal input gives
    byte-identical output.

    ``gzip.compress`` on 3.11+ takes a zlib fast path whose header OS byte depends on the
    platform; writing the RFC 1952 header ourselves keeps objects identical across
    machines, so re-fetching the same body never produces a "changed" raw object.
    Level 6 is zlib's default: HTML compresses nearly as well as at 9, much faster.
    """
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff"
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer

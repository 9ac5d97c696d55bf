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
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_STORE_URI",
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "TMP_PREFIX",
    "InvalidKeyError",
    "ObjectStore",
    "StoreError",
    "gzip_bytes",
    "scrub_secrets",
    "show_key",
    "strip_userinfo",
    "validate_key",
    "validate_prefix",
]

#: What callers use when FLEET_STORE is unset (docs/architecture.md, "Configuration").
DEFAULT_STORE_URI = "file://./data"

#: Temp files for atomic local writes carry this prefix; ``list`` hides them and keys may
#: not use it, so a half-written temp file can never be mistaken for an object.
TMP_PREFIX = ".fleet-tmp-"

DEFAULT_CONTENT_TYPE = "application/octet-stream"


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


def show_key(key: str) -> str:
    """The key for an error message: a hostile run name may be megabytes long."""
    return repr(key[:160] + "...") if len(key) > 160 else repr(key)


def validate_key(key: str) -> str:
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
        raise InvalidKeyError(f"object key must be relative, got {show_key(key)}")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"object key may not contain backslashes or NUL bytes: {show_key(key)}")
    if not key.isascii():
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKeyError(f"object key is not valid UTF-8 (lone surrogate): {show_key(key)}") from None
    else:
        size = len(key)
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_BYTES} bytes: {show_key(key)}")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidKeyError(
                f"object key has an empty, '.' or '..' segment: {show_key(key)} "
                "(keys look like 'items/spider=books/run=.../ab/ab12.jsonl')"
            )
        if seg.startswith(TMP_PREFIX):
            raise InvalidKeyError(f"object key segment may not start with {TMP_PREFIX!r}: {show_key(key)}")
        if len(seg) > MAX_SEGMENT_BYTES // 4 and len(seg.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(f"object key segment is longer than {MAX_SEGMENT_BYTES} bytes: {show_key(key)}")
    return key


def validate_prefix(prefix: str) -> str:
    """A list prefix is a plain string prefix (may end in '/' or mid-segment)."""
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ValueError(f"list prefix must be relative and free of '..': {prefix!r}")
    return prefix


class ObjectStore(abc.ABC):
    """A flat namespace of keys -> bytes, rooted at ``uri``."""

    #: The URI this store was opened with, credentials stripped (safe to log).
    uri: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE, durable: bool = True) -> None:
        """Write ``data`` at ``key``, replacing any existing object, atomically."""

    #: True when ``put(durable=False)`` + one :meth:`sync` per batch is cheaper than a sync per put.
    group_sync: bool = False

    def sync(self) -> None:
        """Make every earlier ``put(durable=False)`` durable (group commit). Default: nothing to do."""
        return None

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
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

    def put_file(self, key: str, path: Path, *, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
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


def scrub_secrets(text: str) -> str:
    """Belt and braces: never let a secret from the environment reach a log line."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def strip_userinfo(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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

"""Object stores chosen by URI scheme: ``open_store`` returns a :class:`LocalStore` for ``file://`` and an
:class:`S3Store` for ``s3://``; the API they share (``ObjectStore``, ``StoreError``, key rules) is in
:mod:`scraper.store.base`, re-exported here because every caller opens a store through this module.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from scraper.store.base import (
    DEFAULT_STORE_URI,
    InvalidKeyError,
    ObjectStore,
    StoreError,
    gzip_bytes,
    scrub_secrets,
    strip_userinfo,
)
from scraper.store.local import LocalStore
from scraper.store.s3 import S3Store, parse_s3_uri

__all__ = [
    "DEFAULT_STORE_URI",
    "InvalidKeyError",
    "LocalStore",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "check_store_uri",
    "gzip_bytes",
    "open_store",
    "scrub_secrets",
    "store_identity",
]


def open_store(uri: str) -> ObjectStore:
    """Open the store named by ``FLEET_STORE``-style URI (``file://...`` or ``s3://...``)."""
    return LocalStore(uri) if check_store_uri(uri) == "file" else S3Store(uri)


def store_identity(uri: str) -> str:
    """What names the store ``uri`` opens, the same from every directory and process: a ``file://`` store's
    absolute directory (a relative URI is relative to the current directory), an ``s3://`` URI without
    credentials or a trailing slash. Recorded per spider and run in Redis (scraper.queue.storebind)."""
    if check_store_uri(uri) == "file":
        return f"file://{LocalStore(uri).root}"
    return strip_userinfo(uri).rstrip("/")


def check_store_uri(uri: str) -> str:
    """The scheme (``file`` or ``s3``) of a store URI that names a store, or ValueError saying what is wrong.
    Nothing is opened, no client made (an AWS profile or config file is read only when the store is)."""
    if not uri:
        raise ValueError(f"empty store URI; expected s3://bucket/prefix or {DEFAULT_STORE_URI}")
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme == "file":
        LocalStore(uri)  # parses only
        return scheme
    if scheme == "s3":
        parse_s3_uri(uri)
        for name in ("AWS_ENDPOINT_URL", "FLEET_S3_ENDPOINT_URL"):  # boto3 refuses a bad one when it opens
            parts = urlsplit(os.environ.get(name) or "")
            if parts.geturl() and not (parts.scheme in ("http", "https") and parts.netloc):
                raise ValueError(f"{name} is not an http(s) URL with a host")
        return scheme
    raise ValueError(
        f"unsupported store URI {strip_userinfo(uri)!r}: expected s3://bucket/prefix, "
        f"file:///absolute/path or file://./relative/path (default {DEFAULT_STORE_URI})"
    )

"""What identifies a spider's output: its version and its declared item key.

Why one place: the worker stamps both into every record (``_meta.spider_version``, ``_meta.idempotency_key``)
and the run manifest reports them; computed here once per spider class so the two never disagree.

* version: the spider class's ``version`` attribute when it has one (a YAML spec's ``version:``); else
  the Fleet package version plus a hash of the spider's source file, so a code change shows in the
  manifest and the records even when nobody bumped a number.
* item key: ``item_key = ("sku",)`` (YAML ``key: [sku]``) names the fields whose values identify an item
  across pages and runs (scraper.store.objects.declared_key); without it the per-request key stays.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
from pathlib import Path
from typing import Any

__all__ = ["ItemKeyError", "fleet_version", "item_key_of", "spider_version"]


class ItemKeyError(ValueError):
    """A spider's ``item_key`` that cannot be used; the message says what to declare instead."""


@functools.cache
def fleet_version() -> str:
    try:
        return importlib.metadata.version("fleet")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _cls(spider: Any) -> type:
    return spider if isinstance(spider, type) else type(spider)


@functools.cache
def _version_of(cls: type) -> str:
    declared = getattr(cls, "version", None)
    if declared is not None and str(declared):
        return str(declared)[:100]
    try:
        path = inspect.getsourcefile(cls)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else "nosource"
    except (OSError, TypeError):
        digest = "nosource"
    return f"{fleet_version()}+{digest}"


def spider_version(spider: Any) -> str:
    """The spider's (class or instance) version; cached per class: the worker asks once a page."""
    return _version_of(_cls(spider))


@functools.cache
def _key_of(cls: type) -> tuple[str, ...]:
    raw = getattr(cls, "item_key", None)
    if raw is None or raw == () or raw == []:
        return ()
    if isinstance(raw, str):
        raw = (raw,)
    if not isinstance(raw, (tuple, list)) or not all(isinstance(f, str) and f and f != "_meta" for f in raw):
        raise ItemKeyError(f"spider {getattr(cls, 'name', cls.__name__)!r}: item_key must be a tuple of field "
                           f"names, e.g. item_key = ('sku',); got {raw!r:.80}")
    if len(set(raw)) != len(raw):
        raise ItemKeyError(f"spider {getattr(cls, 'name', cls.__name__)!r}: item_key names a field twice: {raw!r:.80}")
    return tuple(raw)


def item_key_of(spider: Any) -> tuple[str, ...]:
    """The declared key fields of a spider (class or instance), () when it declares none.
    Raises :class:`ItemKeyError` for a declaration that is not a tuple of field names."""
    return _key_of(_cls(spider))

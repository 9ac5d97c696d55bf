"""Semantic drift (class C): the page loaded, but extraction no longer finds what the spider promised.

A spider opts in by declaring ``required_fields`` (every item must have them, non-empty) and/or
``item_callbacks`` (callbacks that must yield at least one item). ``required_fields_by_callback``
(optional, a mapping callback name -> fields) narrows the required fields per callback: YAML specs set
it, since each page rule declares its own. Navigation callbacks are never
drift, and spiders that declare nothing never produce C. Block pages never reach this check: they are
classified B first (scraper.policy.taxonomy, in middlewares.classify).

Why not a middleware: the check needs every item a response produced, after the pipelines, which only
the runtime's ledger knows (it runs :func:`check` when a request is finished); ``fleet replay`` runs the
same check offline on a stored page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itemadapter import ItemAdapter

__all__ = [
    "DriftVerdict",
    "check",
    "declarations",
    "is_item_callback",
    "missing_fields",
    "required_for",
    "tracks_drift",
]


@dataclass(frozen=True)
class DriftVerdict:
    reason: str
    missing: tuple[str, ...] = ()


def declarations(spider: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    required = tuple(getattr(spider, "required_fields", ()) or ())
    callbacks = tuple(getattr(spider, "item_callbacks", ()) or ())
    return required, callbacks


def tracks_drift(spider: Any) -> bool:
    required, callbacks = declarations(spider)
    return bool(required or callbacks)


def is_item_callback(spider: Any, callback: str | None) -> bool:
    _, callbacks = declarations(spider)
    if callbacks:
        return (callback or "parse") in callbacks
    return False


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return not value.strip()
    if isinstance(value, (list, tuple, dict, set)):
        return len(value) == 0
    return False


def required_for(spider: Any, callback: str | None) -> tuple[str, ...]:
    by_callback = getattr(spider, "required_fields_by_callback", None)
    if by_callback:
        own = by_callback.get(callback or "parse")
        if own is not None:
            return tuple(own)
    return declarations(spider)[0]


def missing_fields(spider: Any, item: Any, callback: str | None = None) -> list[str]:
    required = required_for(spider, callback)
    # plain dicts (most spiders) are read directly: ItemAdapter costs microseconds per item per page
    adapter: Any = item if type(item) is dict else ItemAdapter(item)
    return [f for f in required if f not in adapter or _empty(adapter.get(f))]


def check(spider: Any, callback: str | None, items: Sequence[Any]) -> DriftVerdict | None:
    """C when an item callback yields nothing, or any item lacks a required field."""
    if not tracks_drift(spider):
        return None
    if not items:
        if is_item_callback(spider, callback):
            return DriftVerdict("no_items")
        return None
    missing: list[str] = []
    for item in items:
        for f in missing_fields(spider, item, callback):
            if f not in missing:
                missing.append(f)
    if missing:
        return DriftVerdict("missing_fields", tuple(missing))
    return None

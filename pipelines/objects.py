"""Object keys and encoding moved to :mod:`scraper.objects` (pipelines import scraper, never the reverse);
these names stay importable from here for existing code."""

from __future__ import annotations

from scraper.objects import (
    JSON_SCALARS,
    ObjectWriter,
    WriteContext,
    encode_items,
    evidence_key,
    idempotency_key,
    item_to_dict,
    items_key,
    raw_key,
)

__all__ = ["JSON_SCALARS", "ObjectWriter", "WriteContext", "encode_items", "evidence_key", "idempotency_key",
           "item_to_dict", "items_key", "raw_key"]

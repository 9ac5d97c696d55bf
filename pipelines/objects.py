"""Object keys and encoding for item pipelines: a re-export of :mod:`scraper.store.objects`.

Why a re-export: the key builders and the item encoding are shared by the runtime, ``fleet replay`` and
``fleet smoke``, so they live in scraper (which never imports pipelines/); a pipeline imports them from
here or from scraper.store.objects alike.
"""

from scraper.store.objects import (
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

__all__ = [
    "JSON_SCALARS",
    "ObjectWriter",
    "WriteContext",
    "encode_items",
    "evidence_key",
    "idempotency_key",
    "item_to_dict",
    "items_key",
    "raw_key",
]

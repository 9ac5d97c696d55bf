"""Deterministic object writes: one object per request that yielded items, plus its raw body.

Keys come only from spider, run and the request fingerprint, so a redelivered request overwrites the
very same object: retries can never double a record (docs/architecture.md, "Durability and crash
windows"). Items are stamped with ``_meta`` here, at write time, so every line carries its provenance.
Each record's ``_meta.idempotency_key`` is what an export keeps one row per: by default the n-th item of
a request, or, for a spider that declares ``item_key = ("sku",)``, those field values (:func:`declared_key`),
so the same product found on two pages or in two runs is one row.
In scraper, not pipelines/: the runtime, ``fleet replay`` and ``fleet smoke`` build these keys too, and
scraper never imports pipelines (pipelines.objects re-exports them for item pipelines).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from itemadapter import ItemAdapter
from scrapy.utils.serialize import ScrapyJSONEncoder

from scraper.infra.redact import redact_data
from scraper.queue.names import BadName, check_fp, check_run, check_spider, is_fp, is_name
from scraper.store.backends import InvalidKeyError, ObjectStore, gzip_bytes

__all__ = [
    "JSON_SCALARS",
    "ItemEncodeError",
    "ObjectWriter",
    "WriteContext",
    "declared_key",
    "encode_items",
    "evidence_key",
    "idempotency_key",
    "item_to_dict",
    "items_key",
    "json_default",
    "key_values",
    "no_surrogates",
    "raw_key",
]


def _checked(spider: str, run: str, fp: str) -> None:
    """Every key names a valid spider, run and fingerprint (scraper.queue.names), checked here again although
    queue entries are checked when decoded: whatever path a value took, it cannot write outside its
    spider's and run's prefix. Raises the store's InvalidKeyError (the runtime fails only this request's
    object, into the DLQ, and acknowledges the rest of its batch) with scraper.queue.names' reason."""
    if not (is_name(spider) and is_name(run) and is_fp(fp)):
        try:
            check_spider(spider)
            check_run(run)
            check_fp(fp)
        except BadName as exc:
            raise InvalidKeyError(str(exc)) from None


def items_key(spider: str, run: str, fp: str) -> str:
    _checked(spider, run, fp)
    return f"items/spider={spider}/run={run}/{fp[:2]}/{fp}.jsonl"


def raw_key(spider: str, run: str, fp: str) -> str:
    _checked(spider, run, fp)
    return f"raw/spider={spider}/run={run}/{fp[:2]}/{fp}.html.gz"


def evidence_key(spider: str, run: str, cls: str, fp: str) -> str:
    _checked(spider, run, fp)
    if cls not in ("A", "B", "C", "D"):
        raise ValueError(f"evidence class {cls!r:.20} is not A, B, C or D")
    return f"evidence/spider={spider}/run={run}/{cls}/{fp}.json"


def idempotency_key(spider: str, fp: str, index: int) -> str:
    """Stable across redeliveries and runs: the n-th item of the same request of the same spider."""
    return hashlib.sha256(f"{spider}|{fp}|{index}".encode()).hexdigest()[:24]


def key_values(data: dict[str, Any], fields: Sequence[str]) -> list[Any] | None:
    """The values of the declared key fields, or None when one is missing or empty (absent, None, "",
    [] or {}): such an item cannot be told apart from another by its key, so it keeps the per-request
    key (counted as ``fleet/items/key_missing``) rather than merging with every other keyless item."""
    values = []
    for f in fields:
        v = data.get(f)
        if v is None or v == "" or v == [] or v == {}:
            return None
        values.append(v)
    return values


def _key_default(value: Any) -> Any:
    """A declared key's value JSON has no type for, as keys were always made: ``str(value)`` (a datetime, bytes or
    a nested item keeps the key it had before items were written as Scrapy writes them: a run across an upgrade
    stays one key per product), except a set: its members sorted (``str`` listed them in an order that changed
    from one process to the next, so such a key was never stable)."""
    if isinstance(value, (set, frozenset)):
        return _sorted_members(value)
    return str(value)


def _sorted_members(value: set[Any] | frozenset[Any]) -> list[Any]:
    """A set's members in one order whatever the process: sorted, or by (type, repr) when they do not sort."""
    try:
        return sorted(value)
    except TypeError:
        return sorted(value, key=lambda v: (type(v).__name__, repr(v)))


def declared_key(spider: str, values: Sequence[Any]) -> str:
    """The idempotency key of an item by its declared key fields: no run and no fingerprint in it, so
    the same product is one key whichever page or run found it. Canonical JSON (sorted keys, no
    spaces) so that equal values always hash alike."""
    canon = json.dumps(list(values), ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=_key_default)
    return hashlib.sha256(_utf8(f"{spider}|{canon}")).hexdigest()[:24]


def _utf8(text: str) -> bytes:
    """``text`` in UTF-8, a lone surrogate (a JSON API's ``"\\ud800"``: Python keeps it, UTF-8 cannot) as
    U+FFFD, which is also what the HTML parser makes of ``&#xd800;``. Why not fail the item: the same value
    comes back at every attempt (the page would be retried as a store failure, then dead-lettered with its
    other items), and no reader of the objects (DuckDB, Athena, pyarrow) takes a surrogate anyway."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return no_surrogates(text).encode("utf-8")


def no_surrogates(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD (valid pairs were already one code point): what UTF-8,
    and so Redis, the store and every reader, can hold."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


JSON_SCALARS = (str, int, float, bool, type(None))  # types JSON keeps as they are


def item_to_dict(item: Any) -> dict[str, Any]:
    """A plain dict of the item. A flat dict of JSON scalars (what most spiders yield) is copied
    directly: ItemAdapter's generic path costs ~10 µs per item, most of a page's encoding time."""
    if type(item) is dict and all(type(v) in JSON_SCALARS for v in item.values()):
        return dict(item)
    return dict(ItemAdapter(item).asdict())


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~3 µs, once a page
class WriteContext:
    spider: str
    spider_version: str
    run: str
    fp: str
    url: str
    worker_id: str
    attempt: int
    attempts: dict[str, int]
    proxy_id: str | None
    fetched_at: str
    item_key: tuple[str, ...] = ()  # the spider's declared key fields (empty: the per-request key)


# allow_nan=False: NaN and Infinity are not JSON (json.loads takes them, DuckDB, Athena and strict parsers
# refuse the whole line); _finite makes them null, as pandas' to_json does
_SCRAPY_DEFAULT = ScrapyJSONEncoder().default


def json_default(value: Any) -> Any:
    """A value JSON has no type for, as Scrapy's feed exports write it (``ScrapyJSONEncoder``: a set as a list,
    datetime/date/time in ISO 8601, Decimal as its text, a nested item as a dict), so an item reads the same
    in Fleet's objects as in a ``scrapy crawl -O`` feed. Beyond Scrapy: a set's members sorted when they sort (a
    set of strings was listed in a different order by each process: the same page gave other bytes, and
    ``item_key`` another key), bytes as their UTF-8 text (Scrapy's exporter fails on bytes), and anything else
    still as ``str(value)`` rather than failing the write."""
    if isinstance(value, (set, frozenset)):
        return _sorted_members(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return str(value)
    try:
        return _SCRAPY_DEFAULT(value)
    except TypeError:
        return str(value)


_encode_strict = json.JSONEncoder(ensure_ascii=False, default=json_default, separators=(",", ":"),
                                  allow_nan=False).encode


class ItemEncodeError(ValueError):
    """An item no JSON line can hold: a reference cycle, or nesting deeper than Python's recursion limit.
    It fails the same way on every attempt, so its request goes to the DLQ (D ``item_unencodable``), not
    back to the queue as a failed write would (scraper.worker.finisher)."""


_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # json.dumps' spelling of such keys


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null, and as the text json wrote before (``"NaN"``) when a key."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(_NONFINITE[repr(k)] if isinstance(k, float) and not math.isfinite(k) else k): _finite(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (set, frozenset)):  # a set's NaN too (json_default lists it, past this walk)
        return [_finite(v) for v in _sorted_members(value)]
    return value


def _encode(data: dict[str, Any]) -> str:
    try:
        return _encode_strict(data)
    except ValueError as exc:
        if "ircular" in str(exc):
            raise ItemEncodeError("item holds a reference to itself (a cycle): no JSON can hold it") from None
    try:
        return _encode_strict(_finite(data))  # NaN or +-Infinity somewhere in it (the rare case)
    except ValueError as exc:  # whatever else no strict JSON holds: the same at every attempt
        raise ItemEncodeError(f"item is not JSON: {str(exc)[:200]}") from None


def encode_items(ctx: WriteContext, items: Sequence[Any]) -> bytes:
    try:
        return _encode_items(ctx, items)
    except RecursionError:
        raise ItemEncodeError("item nests too deeply for JSON (or holds a cycle)") from None


def _encode_items(ctx: WriteContext, items: Sequence[Any]) -> bytes:
    lines = []
    key_fields = ctx.item_key
    for i, item in enumerate(items):
        data = item_to_dict(item)
        data.pop("_meta", None)
        values = key_values(data, key_fields) if key_fields else None
        data["_meta"] = {
            "idempotency_key": declared_key(ctx.spider, values) if values is not None
            else idempotency_key(ctx.spider, ctx.fp, i),
            "fingerprint": ctx.fp,
            "url": ctx.url,
            "spider": ctx.spider,
            "run": ctx.run,
            "worker_id": ctx.worker_id,
            "attempt": ctx.attempt,
            "attempts": ctx.attempts,
            "proxy": ctx.proxy_id,
            "fetched_at": ctx.fetched_at,
            "spider_version": ctx.spider_version,
        }
        lines.append(_encode(data))
    return _utf8("\n".join(lines) + "\n")


class ObjectWriter:
    """Blocking writes; the runtime calls these from a bounded thread pool, never on the reactor."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def write_items(self, ctx: WriteContext, items: Sequence[Any]) -> str:
        """Durable when it returns (the local store batches its writes through scraper.store.filewriter)."""
        key = items_key(ctx.spider, ctx.run, ctx.fp)
        self.store.put(key, encode_items(ctx, items), content_type="application/x-ndjson")
        return key

    def write_raw(self, spider: str, run: str, fp: str, body: bytes) -> str:
        key = raw_key(spider, run, fp)
        self.store.put(key, gzip_bytes(body), content_type="application/gzip", durable=False)
        return key

    def write_evidence(self, spider: str, run: str, cls: str, fp: str, evidence: dict[str, Any]) -> str:
        key = evidence_key(spider, run, cls, fp)
        # redacted: the request's URL may hold user:pass@ (SECURITY.md: never a password in evidence)
        data = _utf8(json.dumps(redact_data(evidence, secret_fields=False), ensure_ascii=False, default=str,
                                sort_keys=True))
        self.store.put(key, data, content_type="application/json")
        return key

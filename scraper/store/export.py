"""``fleet export``: one record per idempotency key of a run, as Parquet (or JSONL) for analysts.

Why a separate step: items objects are written per request for exactly-once effects; analysts want one
columnar file per run that DuckDB / Athena / pandas read directly. A redelivered request overwrote its
own object, and the export keeps one record per ``_meta.idempotency_key`` regardless.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from scraper.store.backends import ObjectStore, open_store

__all__ = ["collect", "export_run", "to_jsonl", "to_parquet"]


def collect(
    store: ObjectStore, spider: str, run: str, progress: Callable[[int, int], None] | None = None
) -> list[dict[str, Any]]:
    """Every item record of the run, one per idempotency key. ``progress(read, total)`` is called per
    object read (the keys are listed first so a bar knows its total; they weigh less than the records)."""
    records: dict[str, dict[str, Any]] = {}
    keys = list(store.list(f"items/spider={spider}/run={run}/"))
    if progress is not None:
        progress(0, len(keys))
    for n, key in enumerate(keys, 1):
        for line in store.get(key).decode("utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            meta = rec.get("_meta") or {}
            records[str(meta.get("idempotency_key") or key)] = rec
        if progress is not None:
            progress(n, len(keys))
    return [records[k] for k in sorted(records)]


def _flatten(rec: dict[str, Any]) -> dict[str, Any]:
    """Top-level item fields as columns; nested values as JSON text; _meta fields as _meta_<name>."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if k == "_meta" and isinstance(v, dict):
            for mk, mv in v.items():
                out[f"_meta_{mk}"] = json.dumps(mv) if isinstance(mv, (dict, list)) else mv
        elif isinstance(v, (dict, list)):
            out[k] = json.dumps(v, ensure_ascii=False)
        else:
            out[k] = v
    return out


def to_parquet(records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_flatten(r) for r in records]
    columns: dict[str, list[Any]] = {}
    names: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns[k] = []
                names.append(k)
    for row in rows:
        for k in names:
            columns[k].append(row.get(k))
    arrays = {}
    for k in names:
        try:
            arrays[k] = pa.array(columns[k])
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
            arrays[k] = pa.array([None if v is None else str(v) for v in columns[k]], type=pa.string())
    table = pa.table(arrays) if arrays else pa.table({"_meta_idempotency_key": pa.array([], pa.string())})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def to_jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def export_run(
    store_uri: str, spider: str, run: str, fmt: str, out: str | None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    store = open_store(store_uri)
    records = collect(store, spider, run, progress)
    data = to_parquet(records) if fmt == "parquet" else to_jsonl(records)
    name = f"part-00000.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    if out:
        target = open_store(out)
        key = name
    else:
        target = store
        key = f"exports/spider={spider}/run={run}/{name}"
    target.put(key, data, content_type="application/octet-stream")
    return {"spider": spider, "run": run, "format": fmt, "records": len(records), "location": target.describe(key)}

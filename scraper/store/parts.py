"""Export part files, written to a local directory in bounded memory: Parquet (zstd, bounded row groups) or
gzipped JSON Lines, ``part-NNNNN.<ext>``, at most ``part_rows`` rows each.

Why Parquet in two steps: a Parquet file needs its schema before its first row group, and an item field may
be an int in one record and a string in another, or appear only in records read last. Rows are gathered
column-wise into chunks (bounded in rows and in record bytes), each chunk stored as an Arrow IPC file with
the types Arrow infers for it; :meth:`ParquetParts.finish` then settles one type per column over all chunks
(int and float give float; any other mix, text) and streams the chunks into the parts, one row group each.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EXTRA_COLUMN", "MAX_COLUMNS", "MAX_META_COLUMNS", "PART_ROWS", "ROW_GROUP_ROWS", "JsonlParts", "ParquetParts",
    "flatten", "part_name",
]

#: Rows per part file: a part stays a file analysts can open on a laptop (~100 MB for 1M small items).
PART_ROWS = 1_000_000
#: Rows per Parquet row group at most (also bounded in bytes by the caller's budget).
ROW_GROUP_ROWS = 65_536
#: Item columns a Parquet export has at most. Why a cap: item field names come from the sites crawled, and a
#: page whose items carry a new field name each (hostile or just a key-per-product layout) would otherwise
#: give a schema of millions of columns, held in memory and unreadable by analysts' tools. Fields first seen
#: after the cap go into one JSON text column, ``EXTRA_COLUMN``; the ``_meta_`` columns are always kept.
MAX_COLUMNS = 1_000
EXTRA_COLUMN = "_extra"
#: ``_meta_`` columns at most (``_meta`` has about a dozen fields; an item field may start with ``_meta_`` too).
MAX_META_COLUMNS = 64


def part_name(n: int, fmt: str) -> str:
    return f"part-{n:05d}.{'parquet' if fmt == 'parquet' else 'jsonl.gz'}"


_SCALARS = frozenset((str, int, float, bool, type(None)))
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def flatten(rec: dict[str, Any]) -> dict[str, Any]:
    """Top-level item fields as columns; nested values as JSON text; ``_meta`` fields as ``_meta_<name>``."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if type(v) in _SCALARS:  # most values: one set lookup instead of isinstance calls
            out[k] = v
        elif k == "_meta" and type(v) is dict:
            for mk, mv in v.items():
                out["_meta_" + mk] = mv if type(mv) in _SCALARS else _to_json(mv)
        else:
            out[k] = _to_json(v)
    return out


class JsonlParts:
    """The winning records' JSON text as they are, one a line, gzipped (mtime 0: same input, same bytes)."""

    def __init__(self, directory: Path, part_rows: int = PART_ROWS) -> None:
        self.dir = directory
        self.part_rows = max(1, part_rows)
        self.rows = 0
        self.paths: list[Path] = []
        self._raw: IO[bytes] | None = None
        self._gz: gzip.GzipFile | None = None
        self._in_part = 0

    def _open(self) -> gzip.GzipFile:
        path = self.dir / part_name(len(self.paths), "jsonl")
        self.paths.append(path)
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        self._in_part = 0
        return self._gz

    def _close(self) -> None:
        if self._gz is not None and self._raw is not None:
            self._gz.close()
            self._raw.close()
        self._gz = self._raw = None

    def add(self, line: bytes) -> None:
        gz = self._gz
        if gz is None or self._in_part >= self.part_rows:
            self._close()
            gz = self._open()
        gz.write(line + b"\n")
        self._in_part += 1
        self.rows += 1

    def finish(self) -> list[Path]:
        if not self.paths:
            self._open()  # an empty run still gets one (empty) part: a glob over the run finds it
        self._close()
        return self.paths


def _text(v: Any) -> str | None:
    """A value of a column of mixed types, as text (JSON for non-strings; lone surrogates replaced)."""
    if v is None:
        return None
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class ParquetParts:
    """Flattened records gathered column-wise into chunks, then written as zstd Parquet parts (see module)."""

    def __init__(self, directory: Path, chunk_bytes: int, part_rows: int = PART_ROWS) -> None:
        self.dir = directory
        self.chunk_bytes = max(1 << 16, chunk_bytes)
        self.part_rows = max(1, part_rows)
        self.rows = 0
        self._names: dict[str, None] = {}  # every column in order of first appearance
        self._rows: list[dict[str, Any]] = []  # the current chunk, flattened
        self._chunk_names: dict[str, Any] = {}
        self._admitted: set[str] = set()  # the columns so far (MAX_COLUMNS item columns at most)
        self._item_columns = 0
        self._meta_columns = 0
        self._bytes = 0
        self._chunks: list[tuple[Path, Any]] = []  # (IPC file, its schema)

    def add(self, record: dict[str, Any], size: int) -> None:
        """One record (parsed) whose JSON text was ``size`` bytes (what bounds a chunk)."""
        row = flatten(record)
        admitted = self._admitted
        if not admitted.issuperset(row):
            row = self._admit(row)
        self._rows.append(row)
        self._chunk_names.update(row)  # the values are dropped at the flush; only the key order counts
        self.rows += 1
        self._bytes += size
        if len(self._rows) >= ROW_GROUP_ROWS or self._bytes >= self.chunk_bytes:
            self._flush()

    def _admit(self, row: dict[str, Any]) -> dict[str, Any]:
        """Admit the row's new columns while there is room (MAX_COLUMNS); the rest go to EXTRA_COLUMN."""
        admitted = self._admitted
        extra: dict[str, Any] = {}
        for k in [k for k in row if k not in admitted]:
            if k.startswith("_meta_") and self._meta_columns < MAX_META_COLUMNS:  # an item field can be named so too
                admitted.add(k)
                self._meta_columns += 1
            elif self._item_columns < MAX_COLUMNS:
                admitted.add(k)
                self._item_columns += 1
            else:
                extra[k] = row.pop(k)
        if extra:
            admitted.add(EXTRA_COLUMN)
            row[EXTRA_COLUMN] = _to_json(extra)
        return row

    def _flush(self) -> None:
        import pyarrow as pa

        rows = self._rows
        if not rows:
            return
        arrays = {}
        keys = list(self._chunk_names)
        self._names.update(dict.fromkeys(keys))
        for k in keys:
            values = [row.get(k) for row in rows]
            try:
                arrays[k] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError):  # mixed types: text
                arrays[k] = pa.array([_text(v) for v in values], type=pa.string())
        table = pa.table(arrays)
        path = self.dir / f"chunk-{len(self._chunks):06d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        self._chunks.append((path, table.schema))
        self._rows = []
        self._chunk_names = {}
        self._bytes = 0

    def schema(self) -> Any:
        """One type per column over every chunk; item fields first, then the ``_meta_`` columns."""
        import pyarrow as pa

        seen: dict[str, set[Any]] = {k: set() for k in self._names}
        for _, schema in self._chunks:
            for field in schema:
                seen[field.name].add(field.type)
        fields = []
        order = sorted(self._names, key=lambda k: k.startswith("_meta_"))  # stable: first-seen order kept
        for k in order:
            types = {t for t in seen[k] if not pa.types.is_null(t)}
            if len(types) == 1:
                t = types.pop()
            elif types and all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
                t = pa.float64()
            else:
                t = pa.string()  # mixed, or no value at all
            fields.append(pa.field(k, t))
        if not fields:
            fields.append(pa.field("_meta_idempotency_key", pa.string()))
        return pa.schema(fields)

    def finish(self) -> list[Path]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush()
        schema = self.schema()
        paths: list[Path] = []
        writer: pq.ParquetWriter | None = None
        in_part = 0

        def new_part() -> pq.ParquetWriter:
            path = self.dir / part_name(len(paths), "parquet")
            paths.append(path)
            return pq.ParquetWriter(str(path), schema, compression="zstd")

        try:
            for path, _ in self._chunks:
                with pa.memory_map(str(path), "r") as src:
                    table = _align(pa.ipc.open_file(src).read_all(), schema)
                    start = 0
                    while start < table.num_rows:
                        if writer is None or in_part >= self.part_rows:
                            if writer is not None:
                                writer.close()
                            writer, in_part = new_part(), 0
                        take = min(table.num_rows - start, self.part_rows - in_part)
                        writer.write_table(table.slice(start, take), row_group_size=ROW_GROUP_ROWS)
                        start += take
                        in_part += take
                    del table
                path.unlink()
            if writer is None:
                writer = new_part()  # an empty run still gets one part with a schema: globs and DuckDB work
        finally:
            if writer is not None:
                writer.close()
        return paths


def _align(table: Any, schema: Any) -> Any:
    """``table`` with exactly ``schema``'s columns and types (missing ones null; text of mixed ones)."""
    import pyarrow as pa

    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = _cast(col, field.type)
        else:
            col = pa.nulls(table.num_rows, field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _cast(col: Any, to: Any) -> Any:
    """``col`` as type ``to``. Arrow's safe cast refuses an int beyond 2**53 to float64 (an int column in
    one chunk, floats in another) and some types to text: a float column keeps such an int as the nearest
    float (what a float column means), a text column gets each value's text."""
    import pyarrow as pa

    try:
        return col.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if pa.types.is_string(to):
            return pa.array([None if v is None else _text(v) for v in col.to_pylist()], type=pa.string())
        return col.cast(to, safe=False)

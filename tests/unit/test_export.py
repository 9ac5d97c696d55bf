"""`fleet export` on a local store: one record per idempotency key (latest fetched_at wins, ties by text),
the same rows in the same order whatever the memory budget or the read order, Parquet types settled over
all chunks, parts and row groups bounded, bad lines counted, stale parts removed."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from scraper.store.backends import LocalStore
from scraper.store.dedup import Spill, fetched_rank
from scraper.store.export import export_run

SPIDER, RUN = "books", "r1"


def _rec(key: str, fetched: str, **fields: Any) -> dict[str, Any]:
    return {**fields, "_meta": {"idempotency_key": key, "fetched_at": fetched, "spider": SPIDER, "run": RUN}}


def _put(root: Path, name: str, records: list[dict[str, Any]], extra: bytes = b"") -> None:
    store = LocalStore(f"file://{root}")
    body = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records) + extra
    store.put(f"items/spider={SPIDER}/run={RUN}/{name[:2]}/{name}.jsonl", body)


def _parquet_rows(root: Path, out: str | None = None) -> list[dict[str, Any]]:
    d = (Path(out) if out else root / "exports") / f"spider={SPIDER}" / f"run={RUN}"
    rows: list[dict[str, Any]] = []
    for p in sorted(d.glob("part-*.parquet")):
        rows.extend(pq.read_table(p).to_pylist())
    return rows


def test_fetched_rank_orders_instants_not_spellings() -> None:
    assert fetched_rank("2026-01-01T10:00:00Z") == fetched_rank("2026-01-01T11:00:00+01:00")
    assert fetched_rank("2026-01-01T10:00:00.5+00:00") > fetched_rank("2026-01-01T10:00:00Z")
    assert fetched_rank("yesterday") == fetched_rank(None) == "" < fetched_rank("2000-01-01T00:00:00")


def test_latest_fetched_at_wins_and_ties_are_deterministic(tmp_path: Path) -> None:
    _put(tmp_path, "aa01", [_rec("k1", "2026-01-01T10:00:00Z", price=1), _rec("k2", "2026-01-01T10:00:00Z", price=5)])
    _put(tmp_path, "bb02", [_rec("k1", "2026-01-01T12:00:00+01:00", price=2),  # 11:00 UTC: the latest
                            _rec("k2", "2026-01-01T10:00:00Z", price=7)])  # a tie: the greater text wins
    _put(tmp_path, "cc03", [_rec("k1", "not a date", price=3)])
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", None)
    assert (res["records"], res["duplicates"], res["objects"], res["parts"]) == (2, 3, 3, 1)
    by_key = {r["_meta_idempotency_key"]: r["price"] for r in _parquet_rows(tmp_path)}
    assert by_key == {"k1": 2, "k2": 7}


def test_same_rows_same_order_whatever_the_budget_and_read_order(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget small enough to split partitions again, threads reading in any order: identical output."""
    rnd = random.Random(7)
    n_keys = 6000
    for obj in range(300):
        recs = [_rec(f"key-{rnd.randrange(n_keys)}", f"2026-01-01T00:{rnd.randrange(60):02d}:00Z",
                     pad="x" * 300, n=obj) for _ in range(40)]
        _put(tmp_path, f"{obj:04x}ff", recs)
    big = export_run(f"file://{tmp_path}", SPIDER, RUN, "jsonl", str(tmp_path / "big"), threads=1,
                     memory_budget=256 << 20)
    spills: list[Spill] = []

    class Recorded(Spill):
        def __init__(self, *a: Any) -> None:
            super().__init__(*a)
            spills.append(self)

    monkeypatch.setattr("scraper.store.export.Spill", Recorded)
    small = export_run(f"file://{tmp_path}", SPIDER, RUN, "jsonl", str(tmp_path / "small"), threads=8,
                       memory_budget=1 << 16)
    assert spills[0].splits > 0  # ~80 kB partitions over a 64 kB budget: split again

    def lines(out: str) -> list[bytes]:
        d = tmp_path / out / f"spider={SPIDER}" / f"run={RUN}"
        return gzip.decompress((d / "part-00000.jsonl.gz").read_bytes()).splitlines()

    assert big["records"] == small["records"] == len({json.loads(x)["_meta"]["idempotency_key"] for x in lines("big")})
    assert lines("big") == lines("small")
    assert (tmp_path / "big" / f"spider={SPIDER}" / f"run={RUN}" / "part-00000.jsonl.gz").read_bytes() == \
        (tmp_path / "small" / f"spider={SPIDER}" / f"run={RUN}" / "part-00000.jsonl.gz").read_bytes()


def test_budget_splits_partitions(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 1)  # the floor, 64 kB
    for i in range(40_000):
        spill.add(f"k{i}", "2026-01-01T00:00:00Z", b'{"x":"' + b"y" * 100 + b'"}')
    out = list(spill.winners())
    assert spill.splits > 0 and len(out) == 40_000
    assert list(tmp_path.iterdir()) == []  # every spill file consumed


def test_parquet_types_settled_over_chunks_and_parts_bounded(tmp_path: Path) -> None:
    recs = []
    for i in range(250):
        recs.append(_rec(f"k{i:04d}", "2026-01-01T00:00:00Z",
                         num=i if i < 200 else i + 0.5,  # ints, then floats in a later chunk: float64
                         mixed=i if i % 2 else f"s{i}",  # int and text: text
                         flag=True, tags=["a", i],  # nested: JSON text
                         **({"late": "only in the last records"} if i >= 240 else {})))
    for j in range(0, 250, 10):
        _put(tmp_path, f"{j:04x}aa", recs[j:j + 10])
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", None, part_rows=100)
    assert res["records"] == 250 and res["parts"] == 3
    d = tmp_path / "exports" / f"spider={SPIDER}" / f"run={RUN}"
    files = sorted(d.glob("part-*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [100, 100, 50]
    schema = pq.read_schema(files[0])
    assert str(schema.field("num").type) == "double" and str(schema.field("mixed").type) == "string"
    assert str(schema.field("flag").type) == "bool" and str(schema.field("late").type) == "string"
    assert schema.names[-1].startswith("_meta_") and not schema.names[0].startswith("_meta_")
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = {r["_meta_idempotency_key"]: r for r in _parquet_rows(tmp_path)}
    assert rows["k0003"]["mixed"] == "3" and rows["k0002"]["mixed"] == "s2" and rows["k0201"]["num"] == 201.5
    assert json.loads(rows["k0007"]["tags"]) == ["a", 7] and rows["k0245"]["late"] and rows["k0001"]["late"] is None

    # a smaller export of the same run replaces the parts: none of the earlier three is left over
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", None)
    assert res["parts"] == 1 and [f.name for f in sorted(d.glob("part-*"))] == ["part-00000.parquet"]


def test_bad_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    _put(tmp_path, "aa01", [_rec("k1", "2026-01-01T00:00:00Z", v=1)],
         extra=b"{not json\n[1,2]\n\xff\xfe\n\n" + json.dumps({"no_meta": True}).encode() + b"\n")
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", None)
    assert res["skipped_lines"] == 3 and res["records"] == 2  # the record without _meta is kept


def test_empty_run_gets_one_empty_part(tmp_path: Path) -> None:
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", None)
    assert (res["records"], res["parts"]) == (0, 1)
    assert _parquet_rows(tmp_path) == []


def test_out_directory_layout(tmp_path: Path) -> None:
    _put(tmp_path, "aa01", [_rec("k1", "2026-01-01T00:00:00Z", v=1)])
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", str(tmp_path / "out"))
    assert res["location"] == str(tmp_path / "out" / f"spider={SPIDER}" / f"run={RUN}")
    assert [r["v"] for r in _parquet_rows(tmp_path, str(tmp_path / "out"))] == [1]
    assert not (tmp_path / "exports").exists()


@pytest.mark.parametrize("bad", [("books", "a/b"), ("bad name!", "r1")])
def test_names_that_cannot_be_keys_are_refused(tmp_path: Path, bad: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        export_run(f"file://{tmp_path}", bad[0], bad[1], "parquet", None)


def test_a_big_int_in_one_chunk_and_floats_in_another_export(tmp_path: Path) -> None:
    """An int past 2**53 in one chunk and floats in another: the column is float and the export goes on
    (Arrow's safe cast refuses it); a list is its JSON text."""
    import pyarrow.parquet as pq

    from scraper.store.parts import ParquetParts

    parts = ParquetParts(tmp_path, chunk_bytes=1 << 16)
    parts.add({"n": 2**60, "tags": ["a", "b"]}, 1 << 16)  # a chunk of its own
    parts.add({"n": 1.5, "tags": "c"}, 1 << 16)
    (path,) = parts.finish()
    table = pq.read_table(path)
    assert str(table.schema.field("n").type) == "double" and table.column("n").to_pylist() == [float(2**60), 1.5]
    assert table.column("tags").to_pylist() == ['["a", "b"]', "c"]


def test_columns_are_capped_and_later_fields_go_to_one_json_column(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # items whose field names come from the page (one new name per record): the schema stops growing at the cap
    monkeypatch.setattr("scraper.store.parts.MAX_COLUMNS", 5)
    recs = [_rec(f"k{i:03d}", "2026-01-01T00:00:00Z", name=f"n{i}", **{f"f{i}": i}) for i in range(40)]
    _put(tmp_path, "aa01", recs)
    res = export_run(f"file://{tmp_path}", SPIDER, RUN, "parquet", None)
    assert res["records"] == 40
    d = tmp_path / "exports" / f"spider={SPIDER}" / f"run={RUN}"
    schema = pq.read_schema(sorted(d.glob("part-*.parquet"))[0])
    item_cols = [n for n in schema.names if not n.startswith("_meta_")]
    assert len(item_cols) == 5 + 1 and "_extra" in item_cols, schema.names
    assert {"_meta_idempotency_key", "_meta_fetched_at", "_meta_spider", "_meta_run"} <= set(schema.names)
    rows = {r["_meta_idempotency_key"]: r for r in _parquet_rows(tmp_path)}
    for i in range(40):  # every value is kept: as its column, or in _extra
        r = rows[f"k{i:03d}"]
        value = r.get(f"f{i}") if f"f{i}" in item_cols else json.loads(r["_extra"] or "{}").get(f"f{i}")
        assert value == i and r["name"] == f"n{i}"

"""Declared item keys (``item_key`` / YAML ``key:``): one idempotency key per product whichever page or
run found it, the per-request key when a key field is empty, and the per-run tallies the manifest reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scrapy

from scraper.store.objects import WriteContext, declared_key, encode_items, idempotency_key, key_values
from scraper.worker.identity import ItemKeyError, fleet_version, item_key_of, spider_version
from scraper.worker.tally import MAX_FIELDS, RunTally, json_type
from scraper.worker.yamlspec import compile_spec, parse_spec


def _ctx(fp: str, run: str = "r1", key: tuple[str, ...] = ("sku",)) -> WriteContext:
    return WriteContext(spider="shop", spider_version="1", run=run, fp=fp, url="http://127.0.0.1/x",
                        worker_id="w", attempt=1, attempts={}, proxy_id=None, fetched_at="t", item_key=key)


def _keys(data: bytes) -> list[str]:
    return [json.loads(line)["_meta"]["idempotency_key"] for line in data.decode().splitlines()]


def test_declared_key_is_the_same_across_pages_and_runs() -> None:
    item = {"sku": "SKU-1", "name": "Teapot"}
    a = _keys(encode_items(_ctx("0" * 16, "r1"), [item]))
    b = _keys(encode_items(_ctx("1" * 16, "r2"), [{"name": "other text", "sku": "SKU-1"}]))
    assert a == b == [declared_key("shop", ["SKU-1"])]
    assert declared_key("shop", ["SKU-1"]) != declared_key("other", ["SKU-1"])  # per spider
    assert declared_key("shop", [{"b": 1, "a": 2}]) == declared_key("shop", [{"a": 2, "b": 1}])  # canonical


def test_missing_key_field_falls_back_to_the_request_key() -> None:
    fp = "2" * 16
    keys = _keys(encode_items(_ctx(fp), [{"sku": ""}, {"name": "x"}, {"sku": None}, {"sku": "S"}]))
    assert keys[:3] == [idempotency_key("shop", fp, i) for i in range(3)]
    assert keys[3] == declared_key("shop", ["S"])
    assert key_values({"a": 0, "b": False}, ("a", "b")) == [0, False]  # 0 and False are values


def test_no_declaration_keeps_todays_key() -> None:
    fp = "3" * 16
    assert _keys(encode_items(_ctx(fp, key=()), [{"sku": "S"}])) == [idempotency_key("shop", fp, 0)]


def test_item_key_declarations_are_checked() -> None:
    class Ok(scrapy.Spider):
        name = "ok"
        item_key = "sku"

    class Bad(scrapy.Spider):
        name = "bad"
        item_key = ("sku", 3)

    class Plain(scrapy.Spider):
        name = "plain"

    assert item_key_of(Ok) == ("sku",) and item_key_of(Ok("ok")) == ("sku",)
    assert item_key_of(Plain) == ()
    with pytest.raises(ItemKeyError, match="tuple of field names"):
        item_key_of(Bad)


def test_spider_version_declared_or_derived_from_the_source() -> None:
    class Versioned(scrapy.Spider):
        name = "v"
        version = "7"

    class Unversioned(scrapy.Spider):
        name = "u"

    assert spider_version(Versioned) == "7"
    derived = spider_version(Unversioned)
    assert derived.startswith(fleet_version() + "+") and len(derived.split("+")[-1]) == 12
    assert spider_version(Unversioned("u")) == derived


def test_yaml_key_becomes_item_key() -> None:
    spec = parse_spec(Path("s.yaml"), "name: s\nkey: [sku]\npages: {p: {fields: {sku: 'span::text', a: h1}}}")
    assert item_key_of(compile_spec(spec)) == ("sku",)


def test_tally_counts_coverage_types_and_missing_keys() -> None:
    t = RunTally()
    n = t.written("r", [{"sku": "A", "price": 1.5, "tags": []}, {"sku": None, "price": 2, "tags": ["x"]}], ("sku",))
    assert n == 1
    c = t.runs["r"]
    assert c["items"] == 2 and c["objects"] == 1 and c["key_missing"] == 1
    assert c["c:sku"] == 1 and c["c:price"] == 2 and c["c:tags"] == 1
    assert c["t:string:sku"] == 1 and c["t:null:sku"] == 1 and c["t:number:price"] == 1 and c["t:integer:price"] == 1
    assert json_type(True) == "boolean" and json_type({}) == "object"
    # as the objects hold them: a set is a list (probe round 2: the schema said "string"), a nested item an object
    assert json_type({"a"}) == json_type(frozenset()) == "array" and json_type(scrapy.Item()) == "object"


def test_tally_field_names_are_bounded() -> None:
    t = RunTally()
    t.written("r", [{f"f{i}": i for i in range(MAX_FIELDS + 50)}, {"x" * 500: 1}])
    c = t.runs["r"]
    assert c["fields_dropped"] == 51
    assert sum(1 for k in c if k.startswith("c:")) == MAX_FIELDS


def test_items_are_strict_json_and_an_unencodable_one_says_so() -> None:
    """NaN and infinities are null (json.loads takes NaN; DuckDB, Athena and strict parsers refuse the
    line); a reference cycle or nesting past the recursion limit is ItemEncodeError, which the worker
    dead-letters (D item_unencodable) instead of retrying a write that fails the same way every time."""
    from scraper.store.objects import ItemEncodeError

    line = encode_items(_ctx("a" * 16), [{"sku": 1, "p": float("nan"), "q": [float("inf"), {"r": -float("inf")}]}])
    data = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert (data["p"], data["q"]) == (None, [None, {"r": None}])
    cycle: dict[str, object] = {"sku": 2}
    cycle["self"] = cycle
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    for bad in (cycle, {"sku": 3, "deep": deep}):
        with pytest.raises(ItemEncodeError):
            encode_items(_ctx("b" * 16), [bad])


def test_values_json_has_no_type_for_are_written_as_scrapy_feeds_write_them() -> None:
    """A set is a sorted list (another process listed a set of strings in another order: other bytes for the
    same page, another declared key), datetimes ISO 8601, Decimal text, bytes UTF-8 text, as ScrapyJSONEncoder."""
    import datetime
    import decimal
    import subprocess
    import sys

    from scraper.store.objects import json_default

    assert json.loads(json.dumps({"t": {"b", "a"}, "d": datetime.datetime(2026, 1, 2, 3, 4, 5),
                                  "p": decimal.Decimal("7.50"), "r": b"raw", "x": b"\xff"}, default=json_default)) == {
        "t": ["a", "b"], "d": "2026-01-02T03:04:05", "p": "7.50", "r": "raw", "x": "b'\\xff'"}
    code = "from scraper.store.objects import declared_key; print(declared_key('s', [set('abcdefgh')]))"
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}, cwd=str(Path(__file__).parents[2])).stdout
            for seed in (1, 2, 3)}
    assert len(keys) == 1, keys


def test_a_set_holding_nan_is_written_and_declared_keys_keep_their_old_values() -> None:
    """Review: a set's NaN reached the strict encoder (json_default lists it past _finite's walk) and sent the page
    to the DLQ; a declared key over a datetime, bytes or an item must hash as before the encoding change (str()),
    so a run across the upgrade keeps one key per product."""
    import datetime
    import hashlib

    from scraper.store.objects import _encode

    assert json.loads(_encode({"s": {1.0, float("nan")}})) == {"s": [None, 1.0]} or \
        json.loads(_encode({"s": {1.0, float("nan")}})) == {"s": [1.0, None]}
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    old = hashlib.sha256(("s|" + json.dumps([str(when), str(b"x")], separators=(",", ":"))).encode()).hexdigest()[:24]
    assert declared_key("s", [when, b"x"]) == old
    assert declared_key("s", [{3, 1, "a"}]) == declared_key("s", [{"a", 1, 3}])  # mixed types: one order too


def test_a_lone_surrogate_is_written_as_u_fffd_not_retried_as_a_store_failure() -> None:
    """A JSON API's "\\ud800" survives json.loads as a lone surrogate, which UTF-8 cannot hold: the object
    write raised UnicodeEncodeError at every attempt (store:UnicodeEncodeError, then the DLQ with the
    page's other items). Now it is U+FFFD, valid pairs kept, and a declared key over it is stable."""
    item = json.loads('{"sku": "A\\ud800", "name": "x\\udfff y \\ud83d\\ude00"}')
    data = encode_items(_ctx("c" * 16), [item, {"sku": "B", "name": "fine"}])
    first, second = (json.loads(line) for line in data.decode("utf-8").splitlines())
    assert first["sku"] == "A\ufffd" and first["name"] == "x\ufffd y \U0001f600" and second["name"] == "fine"
    assert _keys(data)[0] == _keys(encode_items(_ctx("d" * 16), [item]))[0]
    tally = RunTally()
    tally.written("r1", [{"\udcff": 1}])
    assert set(tally.runs["r1"]) >= {"t:integer:\ufffd", "c:\ufffd"}  # field names go to Redis as UTF-8

"""The Lua loader without Redis: headers parse, each script gets only the helpers it calls, a script that
touches a key its header does not declare is refused at load, and a call whose KEYS/ARGV counts do not
fit the header is refused before it reaches Redis."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from scraper.queue import scripts as lua

SCRIPTS = lua.names()


def test_every_script_file_is_listed() -> None:
    files = {p.stem for p in lua.LUA_DIR.glob("*.lua")} - {lua.HELPERS}
    assert set(SCRIPTS) == files
    assert {"seed", "seed_bulk", "lease", "maintain", "heartbeat", "commit", "ack", "nack", "release", "dead",
            "has", "hold", "drift", "breaker_reset", "proxy_ban", "proxy_flush"} <= files


@pytest.mark.parametrize("name", SCRIPTS)
def test_header_is_complete(name: str) -> None:
    s = lua.load(name)
    assert s.meta.name == name
    assert s.meta.reply
    assert s.meta.keys or s.meta.keys_each, "every script touches some key"
    # the header's ARGV count covers every literal ARGV index the script reads
    fixed, each = len(s.meta.argv), len(s.meta.argv_each)
    top = max((int(i) for i in re.findall(r"ARGV\[(\d+)\]", lua._code(s.source))), default=0)
    assert top <= fixed + each
    if not each:
        assert top == fixed, f"{name}: ARGV[{fixed}] is declared but ARGV[{top}] is the last read"
    # keys built from prefix (or a SEEN/DONE set's bucket strings) are documented; prefix is passed iff used
    assert ("k.prefix" in s.source) == (s.meta.argv[:1] == ("prefix",))
    assert ("k.prefix" in s.source or lua._calls(lua._code(s.source), "set_open")) == bool(s.meta.computed)
    # the preamble binds the fixed KEYS by name, in header order
    for i, key in enumerate(s.meta.keys, 1):
        assert f"{key} = KEYS[{i}]" in s.source.split("\n", 2)[0 if not s.meta.keys_each else 1]
    assert s.sha == __import__("hashlib").sha1(s.source.encode()).hexdigest()


def test_only_the_helpers_a_script_calls() -> None:
    hb = lua.load("heartbeat").source
    assert "local function owns(" in hb
    for absent in ("set_add", "set_has", "breaker_record", "maintain", "wake", "forget"):
        assert f"local function {absent}(" not in hb
    has = lua.load("has").source
    assert re.findall(r"local function (\w+)\(", has) == [  # transitive, in order
        "server_now", "hex2bin", "fphex", "fpparts", "bucket_has", "set_migrate", "set_open", "set_has"]
    commit = lua.load("commit").source
    for needed in ("claim_child", "deliveries", "dlv_old", "env_head", "breaker_note", "breaker_flush",
                   "breaker_record", "breaker_close", "release_parked", "to_ready", "ready_score", "wake", "server_now", "forget_all", "sc_load",
                   "sc_add", "sc_has", "sc_flush"):
        assert f"local function {needed}(" in commit
    for absent in ("enqueue", "set_add", "set_has", "owns", "forget"):  # the per-entry forms (issue #18)
        assert f"local function {absent}(" not in commit
    assert "local function maintain(" not in commit
    # no helper calls a helper defined after it (Lua locals must be defined before use)
    for name in SCRIPTS:
        src = lua.load(name).source
        defined = [m.start() for m in re.finditer(r"local function (\w+)\(", src)]
        names = re.findall(r"local function (\w+)\(", src)
        for pos, fn in zip(defined, names, strict=True):
            first_call = min((m.start() for m in re.finditer(rf"(?<![\w.]){fn}\(", src)
                              if m.start() != pos + len("local function ")), default=len(src))
            assert first_call > pos, (name, fn)


def test_with_helpers_ignores_names_in_comments() -> None:
    assert lua.with_helpers("-- see wake(k) and forget(k, id)\nreturn 1\n") == "-- see wake(k) and forget(k, id)\nreturn 1\n"


def _write(tmp: Path, name: str, text: str) -> None:
    (tmp / f"{name}.lua").write_text(text, encoding="utf-8")


@pytest.fixture
def lua_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "_helpers.lua").write_text(
        (lua.LUA_DIR / "_helpers.lua").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(lua, "LUA_DIR", tmp_path)
    lua.load.cache_clear()
    lua._helpers.cache_clear()
    yield tmp_path
    lua.load.cache_clear()
    lua._helpers.cache_clear()


def test_undeclared_key_is_refused(lua_dir: Path) -> None:
    _write(lua_dir, "bad", "-- BAD: acks\n-- KEYS: lease inflight env ready\n-- ARGV: -\n-- ARGV...: id token\n"
                           "-- REPLY: 1\nreturn forget(k, ARGV[1])\n")  # forget also touches k.dlv
    with pytest.raises(lua.LuaHeaderError, match=r"does not declare: \['dlv'\]"):
        lua.load("bad")


def test_prefix_needs_computed_line(lua_dir: Path) -> None:
    _write(lua_dir, "bad", "-- BAD: parks\n-- KEYS: inflight lease parkdom ready\n-- ARGV: prefix d id now\n"
                           "-- REPLY: -\npark(k, ARGV[2], ARGV[3], ARGV[4])\n")
    with pytest.raises(lua.LuaHeaderError, match="COMPUTED"):
        lua.load("bad")
    _write(lua_dir, "ok", "-- OK: parks\n-- KEYS: inflight lease parkdom ready\n-- ARGV: prefix d id now\n"
                          "-- REPLY: nothing\n-- COMPUTED: prefix..'parked:'..d (the domain is an argument)\n"
                          "park(k, ARGV[2], ARGV[3], ARGV[4])\n")
    assert lua.load("ok").meta.computed.startswith("prefix..")


@pytest.mark.parametrize("header, error", [
    ("-- OTHER: x\n-- KEYS: a\n-- ARGV: -\n-- REPLY: 1\n", "first line"),
    ("-- BAD: x\n-- ARGV: -\n-- REPLY: 1\n", "no KEYS"),
    ("-- BAD: x\n-- KEYS: a\n-- KEYS: b\n-- ARGV: -\n-- REPLY: 1\n", "twice"),
    ("-- BAD: x\n-- KEYS: a-b\n-- ARGV: -\n-- REPLY: 1\n", "not a name"),
])
def test_malformed_headers(header: str, error: str) -> None:
    with pytest.raises(lua.LuaHeaderError, match=error):
        lua.parse_header("bad", header + "return 1\n")


def test_header_continuation_lines() -> None:
    m = lua.parse_header("x", "-- X: y\n-- KEYS: a\n--   b\n-- ARGV: p\n-- ARGV...: i j (then n groups: q)\n"
                              "-- REPLY: one\n--   two\n-- free text\n--   not a continuation\nreturn 1\n")
    assert m.keys == ("a", "b")
    assert (m.argv, m.argv_each, m.argv_nested) == (("p",), ("i", "j"), True)
    assert m.reply == "one two"


class _FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    def register_script(self, source: str) -> Any:
        async def run(keys: Any, args: Any) -> Any:
            self.calls.append((keys, args))
            return 1
        return run


@pytest.mark.parametrize("name, keys, args, ok", [
    ("heartbeat", 2, 2, True), ("heartbeat", 2, 6, True), ("heartbeat", 2, 3, False), ("heartbeat", 1, 4, False),
    ("ack", 5, 0, True), ("ack", 5, 4, True), ("ack", 5, 3, False), ("ack", 4, 2, False),
    ("lease", 13, 7, True), ("lease", 13, 6, False), ("lease", 13, 8, False), ("lease", 1, 7, False),
    ("commit", 14, 12, True), ("commit", 16, 25, True), ("commit", 15, 12, False), ("commit", 11, 12, False),
    ("commit", 13, 11, False),
    ("seed_bulk", 7, 6, True), ("seed_bulk", 7, 7, False), ("proxy_flush", 2, 6, True), ("proxy_flush", 2, 3, False),
])
def test_bound_checks_counts(name: str, keys: int, args: int, ok: bool) -> None:
    client = _FakeClient()
    bound = lua.Bound(client, name)
    if ok:
        import asyncio
        assert asyncio.run(bound(["k"] * keys, ["a"] * args)) == 1  # type: ignore[arg-type]
        assert len(client.calls) == 1
    else:
        with pytest.raises(lua.LuaCallError, match=name):
            bound(["k"] * keys, ["a"] * args)
        assert client.calls == []

"""Loader of the Lua scripts in ``scraper/queue/lua/*.lua``: parse each header, assemble, bind by SHA.

Why Lua: every state transition (lease, ack, nack, reap, commit) must be atomic across the whole fleet,
and batching many transitions into one script call keeps the Redis round trips per page below one.

Why files with a parsed header: the header (``KEYS``, ``ARGV``, ``REPLY``, and ``COMPUTED`` for keys a
script can only build inside itself) is the contract between a script and its call site, so it is data,
checked three ways: at load time against the script's own use of ``k.<name>`` (every key it touches
through ``k`` is declared), on every call by :class:`Bound` (the number of KEYS and ARGV matches), and
by tests/integration/test_lua_scripts.py (every script compiles on a real redis-server and every call
site passes the declared names).

Assembly: the loader binds the script's fixed KEYS to a Lua table ``k`` by their header names
(``k.ready`` is the KEYS entry named ``ready``), sets ``k.prefix`` from ``ARGV[1]`` when the header's first
ARGV is ``prefix``, defines ``KN`` (the number of fixed KEYS) when the header has a repeated KEYS group,
then prepends from ``_helpers.lua`` only the helpers the script calls (and the helpers those call). A
script is loaded once per client and called by SHA (redis-py's ``Script``: EVALSHA, and on NOSCRIPT one
SCRIPT LOAD and a retry). All keys of one spider share the hash tag ``{spider}`` (one cluster slot).
Compatible with Redis 6.2+.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Bound",
    "LuaCallError",
    "LuaHeaderError",
    "Script",
    "ScriptMeta",
    "bind",
    "load",
    "names",
    "parse_header",
    "with_helpers",
]

LUA_DIR = Path(__file__).with_name("lua")
HELPERS = "_helpers"

_FIELD = re.compile(r"^-- (KEYS|KEYS\.\.\.|ARGV|ARGV\.\.\.|REPLY|COMPUTED):\s*(.*)$")
_CONT = re.compile(r"^--   +(.*)$")
_FUNC = re.compile(r"^local function (\w+)\(", re.M)
_KREF = re.compile(r"\bk\.(\w+)")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$", re.I)


class LuaCallError(ValueError):
    """A call site passed KEYS or ARGV that do not fit the script's header (a bug, never user input)."""


class LuaHeaderError(ValueError):
    """A .lua file's header is malformed or disagrees with the script's own code."""


@dataclass(frozen=True, slots=True)
class ScriptMeta:
    """A script's header: the names of its KEYS and ARGV, fixed then repeated, and its reply."""

    name: str
    keys: tuple[str, ...]
    keys_each: tuple[str, ...]  # a group repeated after the fixed keys (empty: none)
    argv: tuple[str, ...]
    argv_each: tuple[str, ...]  # a group repeated after the fixed args (empty: none)
    argv_nested: bool  # the repeated ARGV group has a variable tail: only a minimum count is checked
    reply: str
    computed: str  # keys built inside the script, and why ('' = none)

    def check(self, nkeys: int, nargs: int) -> None:
        """Raise LuaCallError unless ``nkeys`` KEYS and ``nargs`` ARGV fit the header."""
        if not _fits(nkeys, len(self.keys), len(self.keys_each), False):
            raise LuaCallError(f"{self.name}: {nkeys} KEYS given, header declares {self._shape('KEYS')}")
        if not _fits(nargs, len(self.argv), len(self.argv_each), self.argv_nested):
            raise LuaCallError(f"{self.name}: {nargs} ARGV given, header declares {self._shape('ARGV')}")
        if (
            self.keys_each
            and self.argv_each
            and not self.argv_nested
            and ((nkeys - len(self.keys)) // len(self.keys_each) != (nargs - len(self.argv)) // len(self.argv_each))
        ):
            raise LuaCallError(f"{self.name}: one KEYS group per ARGV group, given {nkeys} KEYS and {nargs} ARGV")

    def _shape(self, what: str) -> str:
        fixed, each = (self.keys, self.keys_each) if what == "KEYS" else (self.argv, self.argv_each)
        return f"{list(fixed)}" + (f" + n x {list(each)}" if each else "")


def _fits(n: int, fixed: int, each: int, nested: bool) -> bool:
    if not each:
        return n == fixed
    if nested:
        return n >= fixed
    return n >= fixed and (n - fixed) % each == 0


@dataclass(frozen=True, slots=True)
class Script:
    """One assembled script: its source as sent to Redis, its SHA1 and its header."""

    meta: ScriptMeta
    source: str
    sha: str


def _names(value: str) -> tuple[str, ...]:
    if value.strip() in ("", "-"):
        return ()
    out = tuple(value.split())
    for n in out:
        if not _NAME.fullmatch(n):
            raise LuaHeaderError(f"not a name in a header: {n!r}")
    return out


def parse_header(name: str, text: str) -> ScriptMeta:
    """The header of ``text``: its leading ``--`` lines, with one field per ``-- FIELD: value`` line
    (continued by lines indented with three spaces or more)."""
    fields: dict[str, str] = {}
    last = ""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(f"-- {name.upper()}:"):
        raise LuaHeaderError(f"{name}.lua: the first line must be '-- {name.upper()}: what it does'")
    for line in lines[1:]:
        if not line.startswith("--"):
            break
        m = _FIELD.match(line)
        if m:
            last = m.group(1)
            if last in fields:
                raise LuaHeaderError(f"{name}.lua: {last} twice in the header")
            fields[last] = m.group(2)
        elif last and (c := _CONT.match(line)):
            fields[last] += " " + c.group(1)
        else:
            last = ""
    for required in ("KEYS", "ARGV", "REPLY"):
        if required not in fields:
            raise LuaHeaderError(f"{name}.lua: the header has no {required} line")
    each = fields.get("ARGV...", "")
    nested = "(" in each
    return ScriptMeta(
        name=name,
        keys=_names(fields["KEYS"]),
        keys_each=_names(fields.get("KEYS...", "")),
        argv=_names(fields["ARGV"]),
        argv_each=_names(each.split("(", 1)[0]),
        argv_nested=nested,
        reply=fields["REPLY"].strip(),
        computed=fields.get("COMPUTED", "").strip(),
    )


def _read(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def _helpers() -> tuple[tuple[str, str, str], ...]:
    """``_helpers.lua`` as (name, source, code without comments) blocks in file order: one block per
    paragraph (lines between blank lines) that defines a function, comments above it included."""
    blocks: list[tuple[str, str, str]] = []
    for para in _read(HELPERS).split("\n\n"):
        found = _FUNC.findall(para)
        if len(found) > 1:
            raise LuaHeaderError(f"{HELPERS}.lua: one function per paragraph, found {found}")
        if found:
            blocks.append((found[0], para.strip("\n") + "\n\n", _code(para)))
    return tuple(blocks)


def _code(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def _calls(code: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){name}\(", code) is not None


def with_helpers(body: str) -> str:
    """``body`` with the helpers it calls (and the helpers those call) prepended, in file order."""
    blocks = _helpers()
    need: set[str] = set()
    todo = [_code(body)]
    while todo:
        code = todo.pop()
        for n, _src, ncode in blocks:
            if n not in need and _calls(code, n):
                need.add(n)
                todo.append(ncode)
    return "".join(src for n, src, _code_ in blocks if n in need) + body


@functools.cache
def load(name: str) -> Script:
    """The assembled script ``name`` (a file ``scraper/queue/lua/<name>.lua``), checked against its header."""
    text = _read(name)
    meta = parse_header(name, text)
    pre: list[str] = []
    if meta.keys_each:
        pre.append(f"local KN = {len(meta.keys)}\n")
    binds = [f"{n} = KEYS[{i}]" for i, n in enumerate(meta.keys, 1)]
    prefixed = bool(meta.argv) and meta.argv[0] == "prefix"
    if prefixed:
        binds.append("prefix = ARGV[1]")
    if binds:
        pre.append("local k = {" + ", ".join(binds) + "}\n")
    source = "".join(pre) + with_helpers(text)
    used = set(_KREF.findall(source))
    allowed = set(meta.keys) | ({"prefix"} if prefixed else set())
    if used - allowed:
        raise LuaHeaderError(f"{name}.lua uses keys its header does not declare: {sorted(used - allowed)}")
    # a SEEN/DONE set's bucket strings are built from the set's key (lua/_helpers.lua: set_open)
    builds = "prefix" in used or _calls(_code(source), "set_open")
    if builds != bool(meta.computed):
        raise LuaHeaderError(
            f"{name}.lua: builds keys (from prefix, or a set's buckets) iff its header has a COMPUTED line"
        )
    # a batched SEEN/DONE add is only in this call's memory until sc_flush writes it (lua/_helpers.lua)
    if _calls(_code(text), "sc_add") and not _calls(_code(text), "sc_flush"):
        raise LuaHeaderError(f"{name}.lua calls sc_add but never sc_flush: its adds would be lost")
    if "KN" in text and not meta.keys_each:
        raise LuaHeaderError(f"{name}.lua uses KN without a KEYS... group")
    return Script(meta, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


def names() -> list[str]:
    """Every script's name (the .lua files but the helpers)."""
    return sorted(p.stem for p in LUA_DIR.glob("*.lua") if p.stem != HELPERS)


class Bound:
    """A script bound to a client: ``await bound(keys, args)`` runs it by SHA (EVALSHA, SCRIPT LOAD on
    NOSCRIPT, via redis-py's Script) after checking the counts against the header.

    One plain call and two integer comparisons over redis-py's own Script call: nothing per key."""

    __slots__ = ("_script", "meta", "sha")

    def __init__(self, client: Any, name: str) -> None:
        s = load(name)
        self.meta = s.meta
        self.sha = s.sha
        self._script = client.register_script(s.source)

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Awaitable[Any]:
        self.meta.check(len(keys), len(args))
        return self._script(keys=keys, args=args)  # type: ignore[no-any-return]


def bind(client: Any, name: str) -> Bound:
    return Bound(client, name)

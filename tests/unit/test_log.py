"""Fleet's fast bound logger writes exactly the JSON line structlog's configured pipeline writes."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
import structlog

from scraper.infra import log

_TS = re.compile(r'"timestamp": "[^"]+"')


def _lines(emit: Any) -> list[str]:
    log.configure("INFO")
    old, log._BufferedLogger._stream = log._BufferedLogger._stream, io.StringIO()
    try:
        emit()
        return [_TS.sub('"timestamp": "T"', x) for x in log._BufferedLogger._stream.getvalue().splitlines()]
    finally:
        log._BufferedLogger._stream = old


class _Str(str):
    """A str subclass (enum-like values): scrubbed as plain strings are."""


CASES: list[tuple[dict[str, Any], str, str, dict[str, Any]]] = [
    ({"worker": "w1"}, "info", "request_leased", {"run": "r1", "fp": "0123456789abcdef", "attempt": 1}),
    ({}, "info", "started", {}),
    ({"worker": "w1", "spider": "s"}, "warning", "lease_lost", {"lease": "abc"}),
    ({"worker": "w1"}, "error", "boom", {"error": "ValueError('x')", "n": None, "f": 1.5, "l": [1, "é"]}),
    ({"worker": "w1"}, "info", "proxy", {"proxy": "http://user:secret@p.example:8080", "Authorization": "t"}),
    ({"url": "http://u:p@h/"}, "info", "ctx_scrubbed", {"cookie": "c=1"}),
    ({"worker": "w1", "spider": "s"}, "info", "override", {"spider": "other", "x": 1}),  # repeats a context key
    ({"worker": "w1"}, "info", "reserved", {"level": "custom"}),
    ({"worker": "w1"}, "debug", "hidden", {"x": 1}),  # below the level: nothing
    # the fields fast path (plain strings, ints, None) against json's rendering of everything else
    ({"worker": "w1"}, "info", "fields", {"s": 'q"b\\s', "t": "tab\there", "u": "naïve ✓", "e": "",
                                          "b": True, "z": False, "i": -12, "big": 2**70, "n": None,
                                          "f": float("nan"), "d": {"k": [1, None]}, "sp": " !#?AZ[]~"}),
    ({"worker": "w1"}, "info", "at_sign", {"mail": "a@b", "url": "https://k:s@h.example/p", "ok": "x"}),
    ({"worker": "w1"}, "info", "str_subclass", {"url": _Str("https://user:pw@h.example/"), "n": _Str("plain")}),
    ({"worker": "w1"}, "info", "odd_keys", {"we\"ird": 1, "Token": "t", "café": "v", "PASSWORD": "p"}),
]


@pytest.mark.parametrize(("ctx", "method", "event", "kw"), CASES)
def test_fast_logger_line_is_structlogs(ctx: dict[str, Any], method: str, event: str, kw: dict[str, Any]) -> None:
    ours = _lines(lambda: getattr(log.get_logger(**ctx), method)(event, **dict(kw)))
    theirs = _lines(lambda: getattr(structlog.get_logger("fleet").bind(**ctx), method)(event, **dict(kw)))
    assert ours == theirs
    if method != "debug":
        rec = json.loads(ours[0])
        assert rec["event"] == event and "secret" not in ours[0] and "u:p@" not in ours[0]


def test_bind_extends_the_context() -> None:
    lines = _lines(lambda: log.get_logger(worker="w1").bind(spider="s").info("e", k=1))
    assert list(json.loads(lines[0])) == ["worker", "spider", "k", "event", "level", "timestamp"]


def test_a_closed_stderr_never_raises_into_the_caller() -> None:
    """A worker whose stderr reader went away (fleet run's pipe, a second Ctrl-C) keeps settling."""
    import os

    from scraper.infra import log as fleet_log
    r, w = os.pipe()
    os.close(r)
    saved = fleet_log._BufferedLogger._stream
    fleet_log._BufferedLogger._stream = os.fdopen(w, "w", buffering=1 << 16, encoding="utf-8")
    try:
        for _ in range(3):
            fleet_log._BufferedLogger.write_urgent("x" * 70000)  # EPIPE on the flush
            fleet_log._BufferedLogger.write("y")
    finally:
        fleet_log._BufferedLogger._stream = saved

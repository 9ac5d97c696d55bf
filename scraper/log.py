"""Structured logging: one JSON event per transition, with stable names and fields.

Why structlog JSON on stderr: operators grep and ship these events; stdout stays free for the CLI's
JSON results (``fleet seed`` prints its summary there). Scrapy's own stdlib logging is rendered through
the same JSON formatter so a worker's stderr is one stream of JSON lines.

Secrets never reach a log line: :func:`redact` strips credentials from URLs and the processor chain
drops well-known secret-bearing keys.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = {"authorization", "proxy-authorization", "cookie", "set-cookie", "password", "token"}
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^@/\s]+)@")


def redact(text: str) -> str:
    """Replace URL userinfo (``user:pass@``) by ``***@``: proxy and Redis credentials never print."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
        elif isinstance(event[key], str) and "@" in event[key]:
            event[key] = redact(event[key])
    return event


_LEVELS = {"warn": "warning", "exception": "error", "fatal": "critical", "err": "error"}
_dumps = json.JSONEncoder(default=repr).encode
_second: list[Any] = [-1, ""]


def _timestamp() -> str:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes it; the
    date-time prefix is formatted once per second (the renderer runs several times per page)."""
    now = time.time()
    sec = int(now)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((now - sec) * 1e6):06d}Z"


def _render(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """add_log_level + TimeStamper + scrub + JSONRenderer in one step: the same JSON line at a third of
    the cost of the four processors (a worker logs four or five events per page)."""
    event["level"] = _LEVELS.get(method, method)
    event["timestamp"] = _timestamp()
    return _dumps(_scrub(None, method, event))


class _BufferedLogger:
    """JSON lines to stderr through a 64 KiB buffer flushed at most every 100 ms (and at exit).

    A worker emits several events per page; a write(2) per event was ~10 % of the reactor thread's
    time. The price: a SIGKILLed worker may lose its last ~100 ms of log lines, never any data."""

    _stream: Any = None
    _last = 0.0

    def __init__(self, *_: Any) -> None:
        cls = type(self)
        if cls._stream is None:
            cls._stream = os.fdopen(os.dup(2), "w", buffering=1 << 16, encoding="utf-8")
            atexit.register(cls.flush)

    @classmethod
    def flush(cls) -> None:
        if cls._stream is not None:
            try:
                cls._stream.flush()
            except (OSError, ValueError):
                pass

    @classmethod
    def write(cls, message: str) -> None:
        cls._stream.write(message + "\n")
        now = time.monotonic()
        if now - cls._last > 0.1:
            cls._last = now
            cls._stream.flush()

    @classmethod
    def write_urgent(cls, message: str) -> None:
        """Warnings and errors are flushed at once: they are what an operator tails for."""
        cls._stream.write(message + "\n")
        cls.flush()

    def msg(self, message: str) -> None:
        type(self).write(message)

    def urgent(self, message: str) -> None:
        type(self).write_urgent(message)

    log = debug = info = msg
    warn = warning = err = error = critical = exception = fatal = urgent


_NUM = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
        "critical": logging.CRITICAL}
_level = [logging.INFO]  # set by configure()
_RESERVED = frozenset({"event", "level", "timestamp"})
_EVENTS: dict[str, str] = {}  # event name -> its JSON (names are a small, fixed vocabulary)


# printable ASCII without '"', '\\' and '@': what json renders as is and _scrub leaves alone
_PLAIN = re.compile(r"[ !#-?A-\[\]-~]*")
_plain = _PLAIN.fullmatch
_KEYS: dict[str, str] = {}  # field name -> its rendered '"name": ' ('' for a secret-bearing name)


def _fields(kw: dict[str, Any]) -> str:
    """``_dumps(_scrub(kw))`` without its braces, plus ", ": the same text, built without the encoder
    for the fields a worker logs per page (plain strings, ints, None); anything else takes json's path."""
    out = []
    for k, v in kw.items():
        head = _KEYS.get(k)
        if head is None:
            head = "" if k.lower() in _SECRET_KEYS or not _plain(k) else f'"{k}": '
            if len(_KEYS) < 4096:
                _KEYS[k] = head
        if not head:
            return _dumps(_scrub(None, "", kw))[1:-1] + ", "
        t = type(v)
        if t is str:
            out.append(f'{head}"{v}"' if _plain(v) else head + _dumps(redact(v) if "@" in v else v))
        elif t is int:
            out.append(head + int.__repr__(v))
        elif v is None:
            out.append(head + "null")
        else:  # a str subclass is scrubbed as _scrub does (isinstance), then rendered by json
            out.append(head + _dumps(redact(v) if isinstance(v, str) and "@" in v else v))
    out.append("")
    return ", ".join(out)


class Logger:
    """Fleet's bound logger: structlog's event API (``log.bind(k=v).info("event", k=v)``) writing the
    very JSON line the structlog configuration below writes, without its per-call machinery.

    Why: a worker logs four events a page on the reactor thread. The bound context is scrubbed and
    rendered once, at bind time; a call renders only its own fields. Same keys, same order (context,
    fields, event, level, timestamp), same scrubbing; a field that repeats a context key takes the
    general path, as structlog would (the field's value in the context key's place)."""

    __slots__ = ("_ctx", "_head")

    def __init__(self, ctx: dict[str, Any]) -> None:
        self._ctx = ctx
        head = _dumps(_scrub(None, "", dict(ctx)))[:-1]
        self._head = head + ", " if ctx else head

    def bind(self, **kw: Any) -> Logger:
        return Logger({**self._ctx, **kw})

    def _emit(self, method: str, event: str, kw: dict[str, Any]) -> None:
        if _NUM[method] < _level[0]:
            return
        if kw and (not self._ctx.keys().isdisjoint(kw) or not _RESERVED.isdisjoint(kw)):
            line = _render(None, method, {**self._ctx, **kw, "event": event})
        else:
            fields = _fields(kw) if kw else ""
            ev = _EVENTS.get(event)
            if ev is None:
                ev = _dumps(event)
                if len(_EVENTS) < 4096:
                    _EVENTS[event] = ev
            line = (f'{self._head}{fields}"event": {ev}, "level": "{method}", '
                    f'"timestamp": "{_timestamp()}"}}')
        if _BufferedLogger._stream is None:
            _BufferedLogger()
        if method in ("debug", "info"):
            _BufferedLogger.write(line)
        else:
            _BufferedLogger.write_urgent(line)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._emit("critical", event, kw)


_configured = False
_handler: list[logging.Handler] = []


def configure(level: str = "INFO") -> None:
    """Route structlog and stdlib logging (Scrapy's) to JSON lines on stderr. Idempotent."""
    global _configured
    lvl = getattr(logging, level.upper(), logging.INFO)
    _level[0] = lvl
    structlog.configure(
        processors=[_render],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_BufferedLogger,
        cache_logger_on_first_use=False,
    )
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
                foreign_pre_chain=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    _scrub,
                ],
            )
        )
        handler.setLevel(logging.INFO)
        _handler.append(handler)
    root = logging.getLogger()
    root.handlers = list(_handler)
    root.setLevel(logging.INFO)
    _configured = True


def flush() -> None:
    _BufferedLogger.flush()


def get_logger(**bind: Any) -> Logger:
    return Logger(bind)

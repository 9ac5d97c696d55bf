"""Structured logging: one JSON event per transition, with stable names and fields.

Why structlog JSON on stderr: operators grep and ship these events; stdout stays free for the CLI's
JSON results (``fleet seed`` prints its summary there). Scrapy's own stdlib logging is rendered through
the same JSON formatter so a worker's stderr is one stream of JSON lines.

Why a console format as well: a person at a terminal reads ``level event key=value`` faster than JSON.
``FLEET_LOG_FORMAT`` (json | console | auto, the default) picks it; auto means console when stderr is a
terminal, JSON otherwise, so pipes, files and log shippers keep getting JSON. The console format
re-renders the very JSON events (same names, same fields, same scrubbing) and never touches the JSON
fast path: it is a different sink for the same lines.

Scrapy's start-up dumps (versions, overridden settings, enabled components, the final stats dump) are
lowered to DEBUG by :class:`StartupDumpFilter`: they are pages of text that bury the events that
matter, and stay one ``FLEET_LOG_LEVEL=DEBUG`` away.

Secrets never reach a log line: :func:`redact` (``scraper.infra.redact``, re-exported here because the
CLI calls ``log.redact``) strips credentials from URLs and the processor chain drops well-known
secret-bearing keys. The console format's rendering is ``scraper.infra.console``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

from scraper.infra.console import ConsoleSink, LiveStderr, choose_format, console_processor, wants_colors
from scraper.infra.redact import SECRET_KEYS, redact, redact_setting

__all__ = [
    "Logger",
    "StartupDumpFilter",
    "configure",
    "current_format",
    "flush",
    "get_logger",
    "redact",
    "redact_settings_dump",
]

def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in SECRET_KEYS:
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
    def _lost(cls) -> None:
        """stderr's reader is gone (a closed pipe, a full disk): logging must never raise into the code
        that logs, which is often settling a request; later lines go nowhere."""
        cls._stream = open(os.devnull, "w", encoding="utf-8")

    @classmethod
    def write(cls, message: str) -> None:
        try:
            cls._stream.write(message + "\n")
            now = time.monotonic()
            if now - cls._last > 0.1:
                cls._last = now
                cls._stream.flush()
        except (OSError, ValueError):
            cls._lost()

    @classmethod
    def write_urgent(cls, message: str) -> None:
        """Warnings and errors are flushed at once: they are what an operator tails for."""
        try:
            cls._stream.write(message + "\n")
            cls._stream.flush()
        except (OSError, ValueError):
            cls._lost()

    def msg(self, message: str) -> None:
        type(self).write(message)

    def urgent(self, message: str) -> None:
        type(self).write_urgent(message)

    log = debug = info = msg
    warn = warning = err = error = critical = exception = fatal = urgent


_NUM = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
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
            head = "" if k.lower() in SECRET_KEYS or not _plain(k) else f'"{k}": '
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
            line = f'{self._head}{fields}"event": {ev}, "level": "{method}", "timestamp": "{_timestamp()}"}}'
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


# Scrapy's start-up and shutdown dumps: many lines of text each, useful only when debugging Scrapy itself
_SETTINGS_DUMP = "Overridden settings:"
_DUMPS = ("Versions:", _SETTINGS_DUMP, "Enabled ", "Dumping Scrapy stats:")
_WITHHELD = "(withheld: Fleet could not redact this Scrapy's settings dump; see the settings modules)"


def _redacted_overridden(settings: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """Scrapy's ``overridden_settings``, each value through :func:`redact_setting`."""
    from scrapy.settings import overridden_settings

    for name, value in overridden_settings(settings):
        yield name, redact_setting(name, value)


def redact_settings_dump() -> None:
    """Scrapy's "Overridden settings" dump (``scrapy.crawler``, at crawler start: every setting that differs
    from Scrapy's default, ``AWS_SECRET_ACCESS_KEY`` and ``FTP_PASSWORD`` among them) prints redacted
    values: the dict it logs is built by :func:`_redacted_overridden`. Call before a crawler starts.

    Why the dict and not the text: the text is a ``pprint`` of arbitrary values (classes, long strings
    split over lines), which no filter can redact reliably. Should a Scrapy version build the dump
    another way, :class:`StartupDumpFilter` withholds its values instead of printing them."""
    import scrapy.crawler

    if hasattr(scrapy.crawler, "overridden_settings"):
        scrapy.crawler.overridden_settings = _redacted_overridden


def _settings_dump_redacted() -> bool:
    crawler = sys.modules.get("scrapy.crawler")
    return getattr(crawler, "overridden_settings", None) is _redacted_overridden


class StartupDumpFilter(logging.Filter):
    """Lowers Scrapy's start-up dumps (``Versions``, ``Overridden settings``, ``Enabled ...`` components and
    addons, ``Dumping Scrapy stats``) to DEBUG, and ``Disabled X: reason`` (a component turned off by its
    configuration, e.g. no FLEET_PROXIES) from WARNING to INFO: a default is not a warning.

    The settings dump's values are withheld unless :func:`redact_settings_dump` redacted them.

    A handler filter runs after the handler's level check, so it decides itself whether the lowered
    record is still shown: when FLEET_LOG_LEVEL allows its new level."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if not isinstance(msg, str) or not record.name.startswith("scrapy."):
            return True
        if record.levelno == logging.INFO and msg.startswith(_DUMPS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if msg.startswith(_SETTINGS_DUMP) and not _settings_dump_redacted():
                record.msg, record.args = f"{_SETTINGS_DUMP} {_WITHHELD}", ()
        elif record.levelno == logging.WARNING and msg.startswith("Disabled "):
            record.levelno, record.levelname = logging.INFO, "INFO"
        else:
            return True
        return record.levelno >= _level[0]


_FOREIGN_PRE_CHAIN: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _scrub,
]
_handlers: dict[str, logging.Handler] = {}
_format = ["json"]  # the format configure() chose
_json_stream: list[Any] = [None]  # the JSON sink, kept while the console one is in place


def _handler(fmt: str) -> logging.Handler:
    handler = _handlers.get(fmt)
    if handler is not None:
        return handler
    if fmt == "console":
        handler = logging.StreamHandler(LiveStderr())
        final: list[Any] = [structlog.processors.format_exc_info, _scrub, console_processor]
    else:
        handler = logging.StreamHandler(sys.stderr)
        final = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
            foreign_pre_chain=_FOREIGN_PRE_CHAIN,
        )
    )
    handler.addFilter(StartupDumpFilter())
    _handlers[fmt] = handler
    return handler


def configure(level: str = "INFO", fmt: str = "auto") -> str:
    """Route structlog and stdlib logging (Scrapy's) to stderr as JSON lines or, per :func:`choose_format`,
    console lines. Idempotent; returns the format chosen.

    Stdlib records (Scrapy's, third-party libraries') pass at ``level`` but never below INFO: DEBUG
    shows Fleet's debug events and Scrapy's dumps, not every library's debug chatter (botocore's would
    print request signatures)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    _level[0] = lvl
    chosen = choose_format(fmt)
    structlog.configure(
        processors=[_render],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_BufferedLogger,
        cache_logger_on_first_use=False,
    )
    current = _BufferedLogger._stream
    if chosen == "console":
        if isinstance(current, ConsoleSink):
            current.colors = wants_colors()
        else:
            _BufferedLogger.flush()
            _json_stream[0] = current
            _BufferedLogger._stream = ConsoleSink(wants_colors())
    elif isinstance(current, ConsoleSink):
        _BufferedLogger._stream = _json_stream[0]  # None: the JSON sink is opened at the next event
    _format[0] = chosen
    stdlib_level = max(logging.INFO, lvl)
    handler = _handler(chosen)
    handler.setLevel(stdlib_level)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(stdlib_level)
    return chosen


def current_format() -> str:
    """The format the last :func:`configure` chose (``json`` before any)."""
    return _format[0]


def flush() -> None:
    _BufferedLogger.flush()


def get_logger(**bind: Any) -> Logger:
    return Logger(bind)


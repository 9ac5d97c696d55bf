"""The console log format: Fleet's JSON events re-rendered as ``HH:MM:SS [level] event  key=value`` lines.

Why a module of its own: a person at a terminal reads ``level event key=value`` faster than JSON, but
the JSON lines stay the one source (same names, same fields, same scrubbing). This module decides when
the console format applies (``FLEET_LOG_FORMAT=auto``: only on a terminal; colours only without
``NO_COLOR``), renders an event or a line for a person with hostile control characters escaped, and is
the sink ``scraper.infra.log`` swaps in for the console format; ``scraper.infra.progress`` prints
``fleet run``'s workers' lines with it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = [
    "FORMATS",
    "ConsoleSink",
    "LiveStderr",
    "choose_format",
    "console_line",
    "console_processor",
    "escape",
    "isatty",
    "parse_event",
    "render_console",
    "wants_colors",
]

FORMATS = ("auto", "json", "console")


def isatty(stream: Any) -> bool:
    """``stream.isatty()``, False for anything that cannot say (closed, replaced, a StringIO)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def choose_format(requested: str = "auto", stream: Any = None) -> str:
    """``json`` or ``console``: what was asked for, or for ``auto`` console only when ``stream`` (stderr by
    default) is a terminal. Why auto: a person sees readable lines, a pipe or a log shipper gets JSON,
    and neither has to say so."""
    if requested in ("json", "console"):
        return requested
    return "console" if isatty(sys.stderr if stream is None else stream) else "json"


def wants_colors(stream: Any = None) -> bool:
    """ANSI colours only on a terminal and never with NO_COLOR set (https://no-color.org): a forced
    console format written to a file stays plain text."""
    return isatty(sys.stderr if stream is None else stream) and not os.environ.get("NO_COLOR")


# C0 controls but tab and newline, DEL and C1: a hostile page's URL or text must not drive the terminal
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` (as JSON would have escaped them)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_renderers: dict[bool, structlog.dev.ConsoleRenderer] = {}


def render_console(event: MutableMapping[str, Any], colors: bool) -> str:
    """One event as ``HH:MM:SS [level] event  key=value ...``.

    Control characters in values are escaped first (JSON escapes them, a terminal would obey them);
    exceptions print as plain tracebacks (rich's pretty ones show local variables, secrets included)."""
    renderer = _renderers.get(colors)
    if renderer is None:
        renderer = _renderers[colors] = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, pad_event_to=28
        )
    for key, value in event.items():
        if isinstance(value, str) and _CONTROL.search(value):
            event[key] = escape(value)
    ts = event.get("timestamp")
    if isinstance(ts, str) and len(ts) >= 19 and ts[10:11] == "T":
        event["timestamp"] = ts[11:19]  # UTC time of day: the date is noise on a live terminal
    return str(renderer(None, "", event))


def parse_event(line: str) -> dict[str, Any] | None:
    """The event of a JSON log line (one with an ``event`` field), or None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def console_line(line: str, colors: bool) -> str:
    """A JSON log line (Fleet's, Scrapy's, a worker's) as :func:`render_console` shows it; any other line
    as it is, control characters escaped."""
    event = parse_event(line)
    return render_console(event, colors) if event is not None else escape(line)


def console_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """The last structlog processor of the console format: Scrapy's stdlib records, rendered."""
    return render_console(event, wants_colors())


class LiveStderr:
    """sys.stderr as it is at each write: a rich progress display swaps in a proxy that prints above
    the bar, and log lines must go through it rather than through the stream seen at start-up."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class ConsoleSink(LiveStderr):
    """The console format's sink for Fleet's own events: the JSON lines the fast logger renders, each
    re-rendered for a person. Only chosen for a terminal, where a person reads at most a few hundred
    lines a second, so the extra parse costs nothing that matters."""

    def __init__(self, colors: bool) -> None:
        self.colors = colors

    def write(self, text: str) -> int:
        out = "".join(console_line(line, self.colors) + "\n" for line in text.splitlines() if line)
        if out:
            sys.stderr.write(out)
        return len(text)

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


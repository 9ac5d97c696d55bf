"""Queue entries are hostile input: the checks that turn one into trusted envelope fields, or refuse it.

Why a module of its own: every field of an entry is checked once, per lease, before anything trusts it
(the fingerprint is unpacked as hex by the Lua scripts, spider and run become object keys, the URL
becomes a Request, callbacks are looked up on the spider by name, every field is written back as JSON
on a retry). Those rules, and the error that refuses an entry (:class:`EnvelopeError`), sit here apart
from the envelope's wire format (``scraper.queue.envelope``) and the fingerprints
(``scraper.queue.fingerprint``), which raise the same error.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, TypeGuard

from scrapy import Spider

from scraper.policy.urls import FETCHABLE_SCHEMES, POLICY_SCHEME, refusal
from scraper.queue import names

__all__ = [
    "MAX_NESTING",
    "RUNTIME_META",
    "EnvelopeError",
    "callback_name_ok",
    "decode",
    "fields",
    "input_meta",
]

# Meta keys Scrapy or its components set at runtime with non-JSON values; never worth persisting, and
# never taken from an entry.
RUNTIME_META = frozenset({
    "download_slot",
    "download_latency",
    "depth",  # re-derived from the envelope's own field
    "_fleet",
    "proxy",  # chosen per attempt by the proxy middleware
    "_auth_proxy",
    "playwright_page",
    "fleet_proxy_id",  # chosen per attempt by the proxy middleware, like "proxy"
    # scrapy-playwright keys that reach past the page, never taken from an entry (an entry is input):
    # context_kwargs go to Playwright's launch_persistent_context (with user_data_dir: the browser's
    # executable_path and args, that is any program; record_har_path, storage_state: local files); the
    # event handlers and the init callback name spider attributes that are called unchecked
    "playwright_context_kwargs",
    "playwright_page_event_handlers",
    "playwright_page_init_callback",
})


class EnvelopeError(ValueError):
    """An entry that must not be executed: bad JSON, pickle, unknown version, missing or malformed fields,
    or one that cannot become a Scrapy Request. ``run`` is the entry's run id when it had a usable one
    (its DLQ record then counts for that run), else ``""``."""

    def __init__(self, message: str, *, run: str = "") -> None:
        super().__init__(message)
        self.run = run


# An HTTP method or header name (RFC 9110 token); a header value may hold neither CR, LF nor NUL.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]{1,64}")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")
# Nesting deeper than this in meta, cb_kwargs or history is refused: json.dumps recurses, and an entry
# decoded near the recursion limit would fail again each time it is written back (nack, DLQ).
MAX_NESTING = 64
# Attribute names of scrapy.Spider itself: never a callback (an entry naming "close" or "from_crawler"
# must not make the worker call them with a response); "parse" is the one that is.
_SPIDER_ATTRS = frozenset(dir(Spider)) - {"parse"}
# A single-underscore name is a callback like any other (CrawlSpider's rule requests carry self._callback
# and self._errback, SitemapSpider's self._parse_sitemap, users' spiders their own _parse_item), but a
# name-mangled private (``_MySpider__purge``) or a dunder never is; and Envelope.to_request accepts only a
# method of the spider itself, never a callable attribute it holds.
_MANGLED = re.compile(r"_[A-Za-z0-9]\w*?__|__")


def _not_json(name: str) -> Any:
    raise EnvelopeError(f"entry holds {name}, which JSON does not allow")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise EnvelopeError(f"entry holds the number {text[:20]}, out of range")
    return value


# one decoder for every entry: json.loads with hooks would build a decoder per call (~a third of a decode)
_DECODE = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite).decode


def _nesting_ok(value: Any) -> bool:
    """True if ``value`` (decoded JSON) nests at most MAX_NESTING containers deep; iterative, so a deep
    value cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth >= MAX_NESTING:
            return False
        stack.extend((x, depth + 1) for x in item if isinstance(x, (dict, list)))
    return True


def callback_name_ok(value: object) -> TypeGuard[str]:
    """Whether ``value`` may name a spider callback in an entry: an identifier that is not one of Scrapy's
    Spider attributes (``__init__``, ``start``, ``closed``...) nor a mangled private or dunder name."""
    return type(value) is str and value.isidentifier() and value not in _SPIDER_ATTRS and not _MANGLED.match(value)


def _callback_field(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not callback_name_ok(value):
        raise EnvelopeError(f"{key} {value!r:.60} is not the name of a spider callback")
    return str(value)


def _int_field(data: dict[str, Any], key: str, *, minimum: int, maximum: int) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if type(value) is not int or not minimum <= value <= maximum:
        raise EnvelopeError(f"{key} must be an integer from {minimum} to {maximum}")
    return value


def _headers_field(data: dict[str, Any]) -> dict[str, list[str]]:
    raw = data.get("headers")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EnvelopeError("headers must be an object of lists of strings")
    out: dict[str, list[str]] = {}
    for name, values in raw.items():
        if not _TOKEN.fullmatch(name) or not isinstance(values, list):
            raise EnvelopeError(f"header {name!r:.60} is not a header name with a list of values")
        for v in values:
            if type(v) is not str or _BAD_HEADER_VALUE.search(v):
                raise EnvelopeError(f"header {name!r:.60} has a value that is not a one-line string")
        out[name] = list(values)
    return out


def input_meta(key: str) -> bool:
    """Whether meta ``key`` may travel in an envelope: not Scrapy's runtime keys, not Fleet's own."""
    return key not in RUNTIME_META and not key.startswith("_fleet")


def decode(raw: bytes | str) -> dict[str, Any]:
    """The JSON object of a queue entry, or :class:`EnvelopeError`: never pickle, UTF-8 JSON only, no
    NaN or out-of-range numbers (they could not be written back on a retry)."""
    if isinstance(raw, bytes):
        if raw[:1] == b"\x80":
            raise EnvelopeError("pickle payload rejected: Fleet never unpickles queue entries")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError("entry is not UTF-8 JSON") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise EnvelopeError(f"entry is a {type(raw).__name__}, not JSON text")
    try:
        data = _DECODE(text)
    except EnvelopeError:
        raise
    except ValueError:
        raise EnvelopeError("entry is not valid JSON") from None
    except RecursionError:
        raise EnvelopeError("entry is nested too deeply") from None
    if not isinstance(data, dict):
        raise EnvelopeError("entry is not a JSON object")
    return data


def fields(data: dict[str, Any]) -> dict[str, Any]:
    """The checked keyword arguments of ``Envelope(...)`` for a decoded entry (version already checked),
    or :class:`EnvelopeError`; a malformed value may also raise KeyError, TypeError, ValueError,
    AttributeError or OverflowError, which ``Envelope.loads`` turns into EnvelopeError."""
    # the common case (a plain envelope, empty containers) costs a few checks: this runs per lease
    url, spider, run, fp = data.get("url"), data.get("spider"), data.get("run"), data.get("fp")
    if type(url) is not str or not url:
        raise EnvelopeError("url must be a non-empty string")
    if not (names.is_name(spider) and names.is_name(run) and names.is_fp(fp)):
        try:
            names.check_spider(spider)
            names.check_run(run)
            names.check_fp(fp)
        except names.BadName as exc:
            raise EnvelopeError(str(exc)) from None
    problem = refusal(url, FETCHABLE_SCHEMES)  # which schemes this worker fetches is decided later
    if problem is not None:
        if problem.reason == POLICY_SCHEME:
            raise EnvelopeError(f"url: {url.partition(':')[0][:20]!r} is not a scheme Scrapy fetches")
        raise EnvelopeError(f"url: {problem}")
    method = data.get("method") or "GET"
    if method != "GET" and (type(method) is not str or not _TOKEN.fullmatch(method)):
        raise EnvelopeError(f"method {method!r:.40} is not an HTTP method")
    attempts = data.get("attempts") or {}
    if not isinstance(attempts, dict) or (
        attempts and not all(type(v) is int and 0 <= v < 2**31 for v in attempts.values())
    ):
        raise EnvelopeError("attempts must be an object of counts")
    meta, cb_kwargs, history = data.get("meta") or {}, data.get("cb_kwargs") or {}, data.get("history") or []
    if not isinstance(meta, dict) or not isinstance(cb_kwargs, dict):
        raise EnvelopeError("meta and cb_kwargs must be objects")
    if not isinstance(history, list) or (
        history and not all(isinstance(h, dict) and isinstance(h.get("proxy"), (str, type(None))) for h in history)
    ):
        raise EnvelopeError("history must be a list of objects (with string proxy ids)")
    if (
        (meta and not _nesting_ok(meta))
        or (cb_kwargs and not _nesting_ok(cb_kwargs))
        or (history and not _nesting_ok(history))
    ):
        raise EnvelopeError(f"meta, cb_kwargs or history nest deeper than {MAX_NESTING} levels")
    if meta and not all(input_meta(k) for k in meta):
        # an entry is input: it never chooses its proxy, download slot or Fleet's own bookkeeping
        # (a "_fleet_void" would make every outcome of its fetch be dropped unsettled)
        meta = {k: v for k, v in meta.items() if input_meta(k)}
    body = data.get("body") or ""
    if type(body) is not str:
        raise EnvelopeError("body must be base64 text")
    enqueued_at = data.get("enqueued_at") or 0.0
    if type(enqueued_at) not in (int, float):
        raise EnvelopeError("enqueued_at must be a number")
    parent = data.get("parent")
    if parent is not None and type(parent) is not str:
        raise EnvelopeError("parent must be a string")
    return dict(
        url=url,
        spider=spider,  # checked above (names.is_name)
        run=run,
        fp=fp,
        method=method,
        headers=_headers_field(data) if data.get("headers") else {},
        body=base64.b64decode(body, validate=True) if body else b"",
        meta=meta,
        cb_kwargs=cb_kwargs,
        priority=_int_field(data, "priority", minimum=-(2**31), maximum=2**31),
        callback=_callback_field(data, "callback"),
        errback=_callback_field(data, "errback"),
        dont_filter=bool(data.get("dont_filter")),
        depth=_int_field(data, "depth", minimum=0, maximum=2**31),
        attempts=dict(attempts),
        history=history,
        enqueued_at=float(enqueued_at),
        parent=parent,
        lost=_int_field(data, "lost", minimum=0, maximum=2**31) if "lost" in data else 0,
    )

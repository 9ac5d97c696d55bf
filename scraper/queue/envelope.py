"""The request envelope: how a Scrapy request lives in Redis.

Versioned JSON, never pickle: a queue entry is data that any worker version can inspect, the DLQ can
show, and no entry can execute code when decoded. Anything that is not a well-formed envelope of a
known version raises :class:`EnvelopeError`, and the caller sends the raw entry to the DLQ.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import string
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from scrapy import Request, Spider
from scrapy.utils.request import fingerprint as scrapy_fingerprint
from w3lib.url import canonicalize_url, safe_url_string

from scraper.policy.urls import FETCHABLE_SCHEMES, POLICY_SCHEME, refusal
from scraper.queue import names

__all__ = [
    "MAX_NESTING",
    "META_KEY",
    "VERSION",
    "Envelope",
    "EnvelopeError",
    "SeedEncoder",
    "fp64",
    "new_ids",
    "url_fingerprint",
    "url_hash",
]

VERSION = 1

# Keys Fleet keeps in request.meta for itself; they are never serialized from meta.
META_KEY = "_fleet"

# Meta keys Scrapy or its components set at runtime with non-JSON values; never worth persisting.
_RUNTIME_META = {
    "download_slot",
    "download_latency",
    "depth",  # re-derived from the envelope's own field
    "_fleet",
    "proxy",  # chosen per attempt by the proxy middleware
    "_auth_proxy",
    "playwright_page",
    "fleet_proxy_id",  # chosen per attempt by the proxy middleware, like "proxy"
}


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
# A single-underscore name is a callback like any other: Scrapy's own generic spiders use them
# (CrawlSpider's _callback/_errback, SitemapSpider's _parse_sitemap); dunder names never are.
_SPIDER_ATTRS = frozenset(dir(Spider)) - {"parse"}


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


def _callback_field(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) is not str or not value.isidentifier() or value.startswith("__") or value in _SPIDER_ATTRS:
        raise EnvelopeError(f"{key} {value!r:.60} is not the name of a spider callback")
    return value


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


# json.dumps with non-default arguments builds an encoder per call; every envelope is dumped once
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def fp64(request: Request) -> str:
    """The request's 64-bit fingerprint as 16 hex chars.

    Scrapy's SHA1 request fingerprint, truncated: 64 bits keep SEEN/DONE at ~10 bytes per URL in Redis
    and collide with probability ~3e-8 at a billion URLs per run. A body-less GET whose URL qualifies
    for the seeding fast path (below) skips w3lib's canonicalisation: same value, a third of the time
    (every discovered request is fingerprinted on the worker's reactor thread).
    """
    if request.method == "GET" and not request.body:
        fast = _fast(request.url)
        if fast is not None:
            return _fast_fp(fast[0])
    return scrapy_fingerprint(request)[:8].hex()


def url_hash(url: str) -> str:
    """A short hash of a URL for places where raw URL text must not appear (keys, ids)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _callback_name(spider: Spider | None, cb: Any, what: str) -> str | None:
    if cb is None:
        return None
    if isinstance(cb, str):
        return cb
    name = getattr(cb, "__name__", None)
    owner = getattr(cb, "__self__", None)
    if (
        name
        and owner is not None
        and isinstance(owner, Spider)
        and (spider is None or owner is spider or isinstance(owner, type(spider)))
    ):
        return str(name)
    raise EnvelopeError(
        f"request {what} {cb!r} is not a method of the spider; Fleet stores callbacks by name, "
        f"so use a spider method (e.g. callback=self.parse_item)"
    )


@dataclass
class Envelope:
    """One queued request. ``attempts`` counts failures per taxonomy class (A, B, C, D)."""

    url: str
    spider: str
    run: str
    fp: str
    method: str = "GET"
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)
    cb_kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    callback: str | None = None
    errback: str | None = None
    dont_filter: bool = False
    depth: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.time)
    parent: str | None = None
    # deliveries that ended without any outcome: the lease expired and the reaper took it back (its
    # worker died or stalled). Counted by the reaper inside Redis, which rewrites the JSON's first
    # key (so it is always written first); FLEET_MAX_LOST_DELIVERIES ends a request that keeps
    # taking its workers down (D poison:redelivered).
    lost: int = 0

    @property
    def domain(self) -> str:
        """The target host: the unit of politeness, backoff holds and proxy health."""
        cached = self.__dict__.get("_domain")
        if cached is None or cached[0] != self.url:  # parsed once per URL, not once per use
            cached = (self.url, (urlsplit(self.url).hostname or "").lower())
            self.__dict__["_domain"] = cached
        return str(cached[1])

    # -- conversion -------------------------------------------------------------------------------

    @classmethod
    def from_request(cls, request: Request, *, spider_name: str, run: str, spider: Spider | None = None) -> Envelope:
        meta = {
            k: v
            for k, v in request.meta.items()
            if k not in _RUNTIME_META and not k.startswith("_fleet") and _json_safe(v)
        }
        if request.cb_kwargs and not _json_safe(request.cb_kwargs):
            raise EnvelopeError("request cb_kwargs must be JSON-serializable to be queued")
        headers: dict[str, list[str]] = {}
        for k, vs in request.headers.items():
            key = k.decode("latin-1") if isinstance(k, bytes) else str(k)
            headers[key] = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in vs]
        fleet = request.meta.get(META_KEY) or {}
        return cls(
            url=request.url,
            spider=spider_name,
            run=run,
            fp=fp64(request),
            method=request.method,
            headers=headers,
            body=request.body or b"",
            meta=meta,
            cb_kwargs=dict(request.cb_kwargs),
            priority=int(request.priority),
            callback=_callback_name(spider, request.callback, "callback"),
            errback=_callback_name(spider, request.errback, "errback"),
            dont_filter=bool(request.dont_filter),
            depth=int(request.meta.get("depth", 0) or 0),
            parent=fleet.get("fp") if isinstance(fleet, dict) else None,
        )

    def to_request(self, spider: Spider | None) -> Request:
        cb = eb = None
        if self.callback:
            cb = getattr(spider, self.callback, None) if spider is not None else None
            if cb is None:
                raise EnvelopeError(f"spider has no callback named {self.callback!r}", run=self.run)
        if self.errback:
            eb = getattr(spider, self.errback, None) if spider is not None else None
            if eb is None:
                raise EnvelopeError(f"spider has no errback named {self.errback!r}", run=self.run)
        if cb is not None and not callable(cb):
            raise EnvelopeError(f"spider attribute {self.callback!r} is not a callback", run=self.run)
        if eb is not None and not callable(eb):
            raise EnvelopeError(f"spider attribute {self.errback!r} is not an errback", run=self.run)
        meta = dict(self.meta)
        meta["depth"] = self.depth
        try:
            return Request(
                self.url,
                method=self.method,
                headers=self.headers or None,
                body=self.body or None,
                meta=meta,
                cb_kwargs=dict(self.cb_kwargs),
                priority=self.priority,
                callback=cb,
                errback=eb,
                dont_filter=True,  # dedup is Fleet's job (SEEN/DONE), never the in-process dupefilter's
            )
        except (ValueError, TypeError) as exc:  # Scrapy refuses it (e.g. "Missing scheme in request url")
            raise EnvelopeError(f"not a valid request: {type(exc).__name__}: {str(exc)[:200]}", run=self.run) from None

    @classmethod
    def for_url(cls, url: str, *, spider_name: str, run: str) -> Envelope:
        """A plain GET for ``url`` without building a Scrapy Request.

        Same URL normalisation and the same fingerprint as ``from_request(Request(url))``
        (``safe_url_string`` + Scrapy's default SHA1 fingerprint) via ``url_fingerprint``, which
        skips w3lib for URLs already in canonical form (~2 µs instead of ~10). ``fleet seed`` also
        skips the dataclass and its json.dumps (``SeedEncoder``)."""
        safe, fp = url_fingerprint(url)
        return cls(url=safe, spider=spider_name, run=run, fp=fp)

    # -- wire format ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        return {"lost": self.lost, **d} if self.lost else d

    def _fields(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "url": self.url,
            "spider": self.spider,
            "run": self.run,
            "fp": self.fp,
            "method": self.method,
            "headers": self.headers,
            "body": base64.b64encode(self.body).decode("ascii"),
            "meta": self.meta,
            "cb_kwargs": self.cb_kwargs,
            "priority": self.priority,
            "callback": self.callback,
            "errback": self.errback,
            "dont_filter": self.dont_filter,
            "depth": self.depth,
            "attempts": self.attempts,
            "history": self.history,
            "enqueued_at": self.enqueued_at,
            "parent": self.parent,
            "domain": self.domain,
        }

    def dumps(self) -> str:
        return _ENCODE(self.to_dict())

    @classmethod
    def loads(cls, raw: bytes | str) -> Envelope:
        """Decode a queue entry, or raise :class:`EnvelopeError` (and nothing else) for any entry that
        could not become the Request it describes: the caller sends it to the DLQ as ``bad_envelope``.

        Checked here, once per lease, because every later step trusts these fields: the fingerprint is
        unpacked as hex by the Lua scripts (a non-hex one failed the whole commit batch it was in), spider
        and run become object keys, the URL becomes a Request (Scrapy raised ValueError for
        ``javascript:`` out of the scheduler), callbacks are looked up on the spider by name, and every
        field is written back as JSON on a retry (NaN or a 1e400 float would fail that)."""
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
        version = data.get("v")
        if type(version) is not int or version != VERSION:
            raise EnvelopeError(f"unknown envelope version {version!r:.40} (this worker reads v{VERSION})")
        run = data.get("run")
        known = str(run) if names.is_name(run) else ""
        try:
            return cls._from_dict(data)
        except EnvelopeError as exc:
            raise EnvelopeError(str(exc), run=known) from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise EnvelopeError(f"malformed envelope: {type(exc).__name__}: {str(exc)[:200]}", run=known) from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Envelope:
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
        if meta and any(k in _RUNTIME_META or k.startswith("_fleet") for k in meta):
            # an entry is input: it never chooses its proxy, download slot or Fleet's own bookkeeping
            # (a "_fleet_void" would make every outcome of its fetch be dropped unsettled)
            meta = {k: v for k, v in meta.items() if k not in _RUNTIME_META and not k.startswith("_fleet")}
        body = data.get("body") or ""
        if type(body) is not str:
            raise EnvelopeError("body must be base64 text")
        enqueued_at = data.get("enqueued_at") or 0.0
        if type(enqueued_at) not in (int, float):
            raise EnvelopeError("enqueued_at must be a number")
        parent = data.get("parent")
        if parent is not None and type(parent) is not str:
            raise EnvelopeError("parent must be a string")
        return cls(
            url=url,
            spider=spider,  # type: ignore[arg-type]  # checked above (names.is_name)
            run=run,  # type: ignore[arg-type]
            fp=fp,  # type: ignore[arg-type]
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

    def total_attempts(self) -> int:
        return sum(self.attempts.values())


# -- seeding fast path ----------------------------------------------------------------------------
#
# `fleet seed` turns files of millions of URLs into envelopes. The exact path (w3lib's safe_url_string
# and canonicalize_url, a json.dumps for Scrapy's fingerprint, a dataclass and a json.dumps for the
# envelope) costs ~30 µs a URL. Seed URLs are nearly all of one shape: an authority (scheme://host:port)
# then a path and query both w3lib functions leave unchanged. For those, the authority's treatment is
# computed once (by the real functions) and cached, and the rest of the URL needs no work at all. Any
# other URL, or anything we are not sure about, takes the exact path: fingerprints never depend on the
# path taken (tests/unit/test_seed_fastpath.py compares both over a varied corpus).

# Scrapy's fingerprint input for a body-less GET without included headers, around the canonical URL:
# json.dumps({"body": "", "headers": {}, "method": "GET", "url": URL}, sort_keys=True).
_FP_HEAD = '{"body": "", "headers": {}, "method": "GET", "url": "'
_FP_TAIL = '"}'

_QCHARS = r"[A-Za-z0-9\-._~+]"
# Group 1, the authority: http(s):// then anything up to the first '/' that cannot move where a URL
# parser ends the authority ('/', '?', '#', '\' end it; whitespace and controls get stripped). Then a
# path of characters neither w3lib function escapes or decodes (no '%', ';' (params), '[]', '|',
# spaces, non-ASCII), an optional query of key=value pairs of unreserved characters (group 2; their
# order is checked separately), no fragment. "/." (dot segments) is refused separately. Neither the
# path nor the query needs escaping in JSON.
_CANONICAL_URL = re.compile(
    r"((?i:https?)://[^/?#\\\x00-\x20\x7f]+)/[A-Za-z0-9\-._~!$&'()*+,=:@/]*"
    rf"(?:\?({_QCHARS}+={_QCHARS}*(?:&{_QCHARS}+={_QCHARS}*)*))?"
)
# What an authority must become, in both safe and canonical form, for its URLs to take the fast path.
_PLAIN_AUTHORITY = re.compile(r"https?://[a-z0-9.\-]+(?::[0-9]+)?")

# raw authority -> (its safe and canonical form, the envelope domain), or None: take the exact path.
# Bounded, so a file of URLs over millions of hosts cannot grow it without limit.
_AUTHORITY: dict[str, tuple[str, str] | None] = {}
_AUTHORITY_MAX = 65536


def _authority(authority: str) -> tuple[str, str] | None:
    """How URLs under ``authority`` are normalised: (safe = canonical authority, domain), or None.

    Decided by the real functions on ``authority + "/"``: a URL's authority is split off at the first
    '/', and normalised (scheme and host lowercased, IDNA, port) independently of what follows."""
    probe = authority + "/"
    info: tuple[str, str] | None = None
    try:
        safe = safe_url_string(probe, "utf-8")
        if safe[-1:] == "/" and _PLAIN_AUTHORITY.fullmatch(safe, 0, len(safe) - 1) and canonicalize_url(safe) == safe:
            info = safe[:-1], (urlsplit(safe).hostname or "").lower()
    except ValueError:
        pass
    if len(_AUTHORITY) >= _AUTHORITY_MAX:
        _AUTHORITY.clear()
    _AUTHORITY[authority] = info
    return info


def _query_sorted(query: str) -> bool:
    """True if canonicalize_url keeps the pairs of ``query`` (matched by _CANONICAL_URL) in order.

    w3lib sorts the (key, value) pairs after unquoting ('+' -> ' '); among the allowed characters '+'
    and ' ' both sort before every other one, so comparing the raw strings gives the same order."""
    if "&" not in query:
        return True
    pairs = [p.partition("=")[::2] for p in query.split("&")]
    return pairs == sorted(pairs)


def _fast(url: str) -> tuple[str, str] | None:
    """(safe and canonical URL, domain) if ``url`` qualifies for the fast path, else None."""
    m = _CANONICAL_URL.fullmatch(url)
    if m is None or "/." in url or not _FAST_OK:
        return None
    authority, query = m.groups()
    info = _AUTHORITY[authority] if authority in _AUTHORITY else _authority(authority)
    if info is None or (query is not None and not _query_sorted(query)):
        return None
    plain, domain = info
    return (url if plain == authority else plain + url[len(authority) :]), domain


def _exact_fingerprint(url: str) -> tuple[str, str]:
    """What Scrapy does: ``Request(url).url`` and the first 8 bytes of its SHA1 fingerprint, in hex."""
    safe = safe_url_string(url, "utf-8")
    if "://" not in safe:
        raise EnvelopeError(f"missing scheme in request url: {safe}")
    data = json.dumps({"body": "", "headers": {}, "method": "GET", "url": canonicalize_url(safe)}, sort_keys=True)
    return safe, hashlib.sha1(data.encode()).digest()[:8].hex()


def _fast_fp(canonical: str) -> str:
    return hashlib.sha1(f"{_FP_HEAD}{canonical}{_FP_TAIL}".encode()).hexdigest()[:16]


def _premise_holds() -> bool:
    """Whether the installed w3lib leaves every path and query character _CANONICAL_URL accepts as is.

    Checked once at import: should a future w3lib normalise one of them differently, every URL takes
    the exact path rather than getting a fingerprint Scrapy would not give it."""
    samples = [
        "http://a.test/",
        "http://a.test/" + string.ascii_letters + string.digits + "-._~!$&'()*+,=:@//x",
        "https://a.test:8080/p?A-._~+=a-._~+&B=1&b=&b=0&bb=",
    ]
    try:
        return all(_CANONICAL_URL.fullmatch(u) and _exact_fingerprint(u) == (u, _fast_fp(u)) for u in samples)
    except ValueError:
        return False


def url_fingerprint(url: str) -> tuple[str, str]:
    """``(request.url, fp64(request))`` for ``Request(url)``, a plain GET, without building it."""
    fast = _fast(url)
    if fast is not None:
        return fast[0], _fast_fp(fast[0])
    return _exact_fingerprint(url)


_FAST_OK = _premise_holds()


class SeedEncoder:
    """Queue entries ``(envelope JSON, fp)`` for plain seeded GETs of one (spider, run, callback).

    The JSON is byte for byte what ``Envelope.for_url(url, ...)`` with that callback ``.dumps()``
    (same keys, same order) but for the ``enqueued_at`` clock reading: the URL, fp, time and domain
    are spliced into a template, as every other field is constant, instead of dataclass -> dict ->
    json.dumps per URL."""

    def __init__(self, *, spider_name: str, run: str, callback: str | None = None) -> None:
        self.spider_name, self.run, self.callback = spider_name, run, callback
        # Render one envelope with placeholder values and cut it around them. JSON escapes \x00, so
        # a placeholder cannot be confused with a real value; the time is one nobody would enqueue at.
        at = 1.25e-300
        proto = Envelope(url="\x00u", spider=spider_name, run=run, fp="\x00f", callback=callback, enqueued_at=at)
        proto.__dict__["_domain"] = ("\x00u", "\x00d")
        text = proto.dumps()
        pieces: list[str] = []
        self._parts: tuple[str, str, str, str, str] | None = None
        for cut in ('"\\u0000u"', '"\\u0000f"', repr(at), '"\\u0000d"'):
            before, found, text = text.partition(cut)
            if not found or cut in before or cut in text:  # e.g. a run id containing "\x00u"
                return  # no template: every URL takes the exact path
            pieces.append(before)
        self._parts = (pieces[0], pieces[1] + '"', '"' + pieces[2], pieces[3], text)

    def entry(self, url: str) -> tuple[str, str]:
        """``(json, fp)`` for ``url``; raises like ``Envelope.for_url`` for URLs it rejects."""
        parts = self._parts
        if parts is None:
            env = Envelope.for_url(url, spider_name=self.spider_name, run=self.run)
            env.callback = self.callback
            return env.dumps(), env.fp
        head, mid_fp, mid_t, mid_dom, tail = parts
        fast = _fast(url)
        if fast is not None:
            safe, domain = fast
            fp = _fast_fp(safe)
            # safe URL and domain are plain ASCII without '"' or '\': their JSON is themselves, quoted
            return f'{head}"{safe}"{mid_fp}{fp}{mid_t}{time.time()!r}{mid_dom}"{domain}"{tail}', fp
        safe, fp = _exact_fingerprint(url)
        domain = (urlsplit(safe).hostname or "").lower()  # as Envelope.domain
        return (f"{head}{json.dumps(safe)}{mid_fp}{fp}{mid_t}{time.time()!r}{mid_dom}{json.dumps(domain)}{tail}"), fp


def new_ids(n: int) -> list[str]:
    """``n`` random 64-bit entry ids as 16 hex chars, from one urandom call rather than ``n``."""
    raw = os.urandom(8 * n).hex()
    return [raw[i : i + 16] for i in range(0, 16 * n, 16)]

"""The request envelope: how a Scrapy request lives in Redis.

Versioned JSON, never pickle: a queue entry is data that any worker version can inspect, the DLQ can
show, and no entry can execute code when decoded. Anything that is not a well-formed envelope of a
known version raises :class:`EnvelopeError`, and the caller sends the raw entry to the DLQ.
"""

from __future__ import annotations

import base64
import hashlib
import json
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
}


class EnvelopeError(ValueError):
    """An entry that must not be executed: bad JSON, pickle, unknown version, missing fields."""


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
    if name and owner is not None and isinstance(owner, Spider) and (
        spider is None or owner is spider or isinstance(owner, type(spider))
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
    def from_request(
        cls, request: Request, *, spider_name: str, run: str, spider: Spider | None = None
    ) -> Envelope:
        meta = {
            k: v for k, v in request.meta.items() if k not in _RUNTIME_META and _json_safe(v)
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
                raise EnvelopeError(f"spider has no callback named {self.callback!r}")
        if self.errback:
            eb = getattr(spider, self.errback, None) if spider is not None else None
            if eb is None:
                raise EnvelopeError(f"spider has no errback named {self.errback!r}")
        meta = dict(self.meta)
        meta["depth"] = self.depth
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
        if isinstance(raw, bytes):
            if raw[:1] == b"\x80":
                raise EnvelopeError("pickle payload rejected: Fleet never unpickles queue entries")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise EnvelopeError("entry is not UTF-8 JSON") from None
        else:
            text = raw
        try:
            data = json.loads(text)
        except ValueError:
            raise EnvelopeError("entry is not valid JSON") from None
        if not isinstance(data, dict):
            raise EnvelopeError("entry is not a JSON object")
        version = data.get("v")
        if type(version) is not int or version != VERSION:
            raise EnvelopeError(f"unknown envelope version {version!r} (this worker reads v{VERSION})")
        try:
            url, spider, run, fp = data["url"], data["spider"], data["run"], data["fp"]
            if not all(isinstance(x, str) and x for x in (url, spider, run, fp)):
                raise EnvelopeError("url, spider, run and fp must be non-empty strings")
            attempts = data.get("attempts") or {}
            if not isinstance(attempts, dict):
                raise EnvelopeError("attempts must be an object")
            return cls(
                url=url,
                spider=spider,
                run=run,
                fp=fp,
                method=str(data.get("method") or "GET"),
                headers={str(k): [str(x) for x in v] for k, v in (data.get("headers") or {}).items()},
                body=base64.b64decode(data.get("body") or "", validate=True),
                meta=dict(data.get("meta") or {}),
                cb_kwargs=dict(data.get("cb_kwargs") or {}),
                priority=int(data.get("priority") or 0),
                callback=data.get("callback"),
                errback=data.get("errback"),
                dont_filter=bool(data.get("dont_filter")),
                depth=int(data.get("depth") or 0),
                attempts={str(k): int(v) for k, v in attempts.items()},
                history=list(data.get("history") or []),
                enqueued_at=float(data.get("enqueued_at") or 0.0),
                parent=data.get("parent"),
            )
        except EnvelopeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EnvelopeError(f"malformed envelope: {type(exc).__name__}: {exc}") from None

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
        if (safe[-1:] == "/" and _PLAIN_AUTHORITY.fullmatch(safe, 0, len(safe) - 1)
                and canonicalize_url(safe) == safe):
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
    return (url if plain == authority else plain + url[len(authority):]), domain


def _exact_fingerprint(url: str) -> tuple[str, str]:
    """What Scrapy does: ``Request(url).url`` and the first 8 bytes of its SHA1 fingerprint, in hex."""
    safe = safe_url_string(url, "utf-8")
    if "://" not in safe:
        raise EnvelopeError(f"missing scheme in request url: {safe}")
    data = json.dumps({"body": "", "headers": {}, "method": "GET", "url": canonicalize_url(safe)},
                      sort_keys=True)
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
        return (f"{head}{json.dumps(safe)}{mid_fp}{fp}{mid_t}{time.time()!r}{mid_dom}{json.dumps(domain)}"
                f"{tail}"), fp


def new_ids(n: int) -> list[str]:
    """``n`` random 64-bit entry ids as 16 hex chars, from one urandom call rather than ``n``."""
    raw = os.urandom(8 * n).hex()
    return [raw[i : i + 16] for i in range(0, 16 * n, 16)]

"""The request envelope: how a Scrapy request lives in Redis.

Versioned JSON, never pickle: a queue entry is data that any worker version can inspect, the DLQ can
show, and no entry can execute code when decoded. Anything that is not a well-formed envelope of a
known version raises :class:`EnvelopeError`, and the caller sends the raw entry to the DLQ. This module
is the dataclass and its codec; the checks of an entry's fields are ``scraper.queue.entrycheck``, the
fingerprints and ids ``scraper.queue.fingerprint``. ``EnvelopeError``, ``fp64`` and ``new_ids`` are
re-exported here because ``scraper.queue.client`` and the CLI import them from this module (they are
being changed elsewhere; import them from their own modules in new code).
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from scrapy import Request, Spider

from scraper.queue import names, pagemethods
from scraper.queue.entrycheck import EnvelopeError, decode, fields, input_meta
from scraper.queue.fingerprint import exact_fingerprint, fast_form, fast_fp, fp64, new_ids

__all__ = [
    "META_KEY",
    "VERSION",
    "Envelope",
    "EnvelopeError",
    "SeedEncoder",
    "fp64",
    "new_ids",
    "rule_domain",
]

VERSION = 1

# Keys Fleet keeps in request.meta for itself; they are never serialized from meta.
META_KEY = "_fleet"

# json.dumps with non-default arguments builds an encoder per call; every envelope is dumped once
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

# The host as the Lua scripts read it from a URL when an entry has no "domain" (lua/_helpers.lua,
# url_domain): http(s)://, then letters, digits, dots and hyphens up to '/', ':', '?', '#' or the end.
_RULE_HOST = re.compile(r"https?://([A-Za-z0-9.\-]+)(?:[/:?#]|\Z)", re.ASCII)


def rule_domain(url: str) -> str | None:
    """The domain the LEASE script derives from ``url`` (lua/_helpers.lua, url_domain), lowercased; None when
    the rule does not apply (an IPv6 literal, a percent-escape, anything else after the host's characters). Not
    always the URL's host (``https://user:pw@a.example/`` gives "user"): ``_fields`` writes "domain" whenever the
    two differ, so only the rule's agreement with the script matters.

    Why: an envelope leaves out its "domain" when this gives ``Envelope.domain`` (every ordinary URL), which
    was 20-30 bytes of every queued request in Redis's memory, its AOF and its replicas (issue #18)."""
    m = _RULE_HOST.match(url)
    return m.group(1).lower() if m else None


def _json_safe(value: Any) -> bool:
    """Whether ``value`` comes back from its queue entry as the callback expects it: JSON can hold it, and every
    dict in it has text keys. Why the keys: JSON makes ``{1: "one"}`` into ``{"1": "one"}``, and the callback's
    ``lookup.get(1)`` was None on every page, silently (a tuple becomes a list: equal for what items hold)."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:  # most meta values: no dumps, no walk
        return True
    if t is float:
        return math.isfinite(value)
    try:
        _ENCODE(value)  # one encoder for every call (json.dumps with arguments builds one each time)
    except (TypeError, ValueError, RecursionError):
        return False
    todo = [value]
    while todo:  # iterative: json.dumps above bounded the depth
        v = todo.pop()
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                return False
            todo.extend(v.values())
        elif isinstance(v, (list, tuple)):
            todo.extend(v)
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


@functools.lru_cache(maxsize=16)  # once per encoding, not per discovered link
def _header_decoder(encoding: str) -> Any:
    """How a request's header bytes become text: latin-1 (bytes as they are), except for a request built in an
    encoding ASCII is not a subset of. Scrapy encodes header names and values in the request's encoding, and
    ``response.follow`` on a UTF-16/32 or EBCDIC page builds its links in the page's: their Referer header's name
    was ``R\x00e\x00f...``, which failed the fetch and then Fleet's own entry check (the child went to the DLQ as
    ``bad_envelope`` without its URL). Decoded in that encoding, the envelope holds ``Referer`` and its URL."""
    try:
        ascii_compatible = "Referer: /".encode(encoding) == b"Referer: /"
    except (LookupError, UnicodeError):
        ascii_compatible = True
    if ascii_compatible:
        return lambda raw: raw.decode("latin-1")

    def text(raw: bytes) -> str:
        # bytes given as bytes (FormRequest's b"Content-Type", headers={b"Accept": ...}) are kept as passed, in
        # ASCII: printable ASCII is taken as it is (an ASCII text encoded in UTF-16/32 holds NULs, in EBCDIC
        # bytes >= 0x80, so an encoded str is never mistaken for it), anything else decoded in the encoding
        if raw.isascii() and not any(b < 0x20 or b == 0x7F for b in raw):
            return raw.decode("latin-1")
        try:
            return raw.decode(encoding)
        except UnicodeError:
            return raw.decode("latin-1")
    return text


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
    # unix time of creation, as versions before 2026-12-07 wrote it into every entry; no longer written
    # (0.0: not known): nothing reads it, and it was ~33 bytes of every queued request in Redis's memory,
    # AOF and replicas (issue #18). An entry that has it keeps it through retries.
    enqueued_at: float = 0.0
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
            if input_meta(k) and k != pagemethods.KEY and _json_safe(v)
        }
        if pagemethods.KEY in request.meta:
            methods = pagemethods.encode(request.meta[pagemethods.KEY])  # scrapy-playwright's objects, as JSON
            if methods is not None:
                meta[pagemethods.KEY] = methods
        if request.cb_kwargs and not _json_safe(request.cb_kwargs):
            raise EnvelopeError("request cb_kwargs must be JSON-serializable, with text dict keys, to be queued")
        headers: dict[str, list[str]] = {}
        text = _header_decoder(getattr(request.headers, "encoding", None) or request.encoding)
        # the stored pairs (dict.items): Headers.items() looks each name up again through normkey, which title-cases
        # the bytes of a UTF-16 name into another name, and found no value
        for k, vs in dict.items(request.headers):
            key = text(k) if isinstance(k, bytes) else str(k)
            headers[key] = [text(v) if isinstance(v, bytes) else str(v) for v in vs]
        fleet = request.meta.get(META_KEY) or {}
        return cls(
            url=request.url,
            spider=spider_name,
            run=run,
            fp=fp64(request, spider),  # the spider's own REQUEST_FINGERPRINTER_CLASS, if it has one
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
        if cb is not None and not _spider_method(spider, cb):
            raise EnvelopeError(f"spider attribute {self.callback!r} is not a callback", run=self.run)
        if eb is not None and not _spider_method(spider, eb):
            raise EnvelopeError(f"spider attribute {self.errback!r} is not an errback", run=self.run)
        meta = dict(self.meta)
        meta["depth"] = self.depth
        if pagemethods.KEY in meta:
            meta[pagemethods.KEY] = pagemethods.decode(meta[pagemethods.KEY])
        if pagemethods.GOTO_KEY in meta:
            meta[pagemethods.GOTO_KEY] = pagemethods.goto_kwargs(meta[pagemethods.GOTO_KEY])
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
        (``safe_url_string`` + Scrapy's default SHA1 fingerprint), skipping w3lib for URLs already in
        canonical form (``fingerprint.fast_form``: ~2 µs instead of ~10; it also gives the domain, so the
        JSON needs no urlsplit). ``fleet seed`` also skips the dataclass and its json.dumps (``SeedEncoder``)."""
        fast = fast_form(url)
        if fast is None:
            safe, fp = exact_fingerprint(url)
            return cls(url=safe, spider=spider_name, run=run, fp=fp)
        safe, domain = fast
        env = cls(url=safe, spider=spider_name, run=run, fp=fast_fp(safe))
        # the fast path's domain is Envelope.domain's (SeedEncoder splices it in: tests/unit/test_seed_fastpath.py)
        env.__dict__["_domain"] = (safe, domain)
        return env

    # -- wire format ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        return {"lost": self.lost, **d} if self.lost else d

    def _fields(self) -> dict[str, Any]:
        """The JSON object: "v", "url", "spider", "run", "fp" first, "domain" last (the LEASE script reads
        those by position: lua/_helpers.lua env_head), and an optional field only when it differs from its
        default. Why leave defaults out: a queued request is this JSON in Redis's memory, in the AOF and
        on the replicas; a plain GET was ~330 bytes, ~150 of them empty containers, nulls and zeros
        (issue #18). Readers of every version since #14 default a missing field (entrycheck.fields).
        "domain" is written only when the scripts' rule (``rule_domain``) would not give it from the URL;
        no Python reader uses it (``Envelope.domain`` is the URL's host)."""
        d: dict[str, Any] = {"v": VERSION, "url": self.url, "spider": self.spider, "run": self.run, "fp": self.fp}
        if self.method != "GET":
            d["method"] = self.method
        if self.headers:
            d["headers"] = self.headers
        if self.body:
            d["body"] = base64.b64encode(self.body).decode("ascii")
        if self.meta:
            d["meta"] = self.meta
        if self.cb_kwargs:
            d["cb_kwargs"] = self.cb_kwargs
        if self.priority:
            d["priority"] = self.priority
        if self.callback is not None:
            d["callback"] = self.callback
        if self.errback is not None:
            d["errback"] = self.errback
        if self.dont_filter:
            d["dont_filter"] = True
        if self.depth:
            d["depth"] = self.depth
        if self.attempts:
            d["attempts"] = self.attempts
        if self.history:
            d["history"] = self.history
        if self.enqueued_at:
            d["enqueued_at"] = self.enqueued_at
        if self.parent is not None:
            d["parent"] = self.parent
        domain = self.domain
        if rule_domain(self.url) != domain:
            d["domain"] = domain
        return d

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
        field is written back as JSON on a retry (NaN or a 1e400 float would fail that). The checks are
        ``scraper.queue.entrycheck``'s."""
        data = decode(raw)
        version = data.get("v")
        if type(version) is not int or version != VERSION:
            raise EnvelopeError(f"unknown envelope version {version!r:.40} (this worker reads v{VERSION})")
        run = data.get("run")
        known = str(run) if names.is_name(run) else ""
        try:
            return cls(**fields(data))
        except EnvelopeError as exc:
            raise EnvelopeError(str(exc), run=known) from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise EnvelopeError(f"malformed envelope: {type(exc).__name__}: {str(exc)[:200]}", run=known) from None

    def total_attempts(self) -> int:
        return sum(self.attempts.values())


class SeedEncoder:
    """Queue entries ``(envelope JSON, fp)`` for plain seeded GETs of one (spider, run, callback).

    The JSON is byte for byte what ``Envelope.for_url(url, ...)`` with that callback ``.dumps()``
    (same keys, same order): the URL and fp are spliced into a template, as every other field is
    constant, instead of dataclass -> dict -> json.dumps per URL."""

    def __init__(self, *, spider_name: str, run: str, callback: str | None = None) -> None:
        self.spider_name, self.run, self.callback = spider_name, run, callback
        # Render one envelope with placeholder values and cut it around them. JSON escapes \x00, so
        # a placeholder cannot be confused with a real value; the template has no "domain" (nor have the
        # envelopes it serves: entry)
        proto = Envelope(url="\x00u", spider=spider_name, run=run, fp="\x00f", callback=callback)
        fields = proto.to_dict()
        fields.pop("domain", None)
        text = _ENCODE(fields)
        pieces: list[str] = []
        self._parts: tuple[str, str, str] | None = None
        for cut in ('"\\u0000u"', '"\\u0000f"'):
            before, found, text = text.partition(cut)
            if not found or cut in text:  # a second copy (e.g. a run id containing "\x00u"): partition cut at the first
                return  # no template: every URL takes the exact path
            pieces.append(before)
        self._parts = (pieces[0], pieces[1] + '"', '"' + text)

    def entry(self, url: str) -> tuple[str, str]:
        """``(json, fp)`` for ``url``; raises like ``Envelope.for_url`` for URLs it rejects."""
        parts = self._parts
        fast = fast_form(url) if parts is not None else None
        if fast is not None and parts is not None:
            # the fast path's authority is http(s)://, a lowercase host of letters, digits, dots and hyphens,
            # maybe a port, then '/' (fingerprint._PLAIN_AUTHORITY): the rule gives its domain, so its envelope
            # has none (tests/unit/test_seed_fastpath.py holds the template to Envelope.for_url's JSON)
            safe = fast[0]
            fp = fast_fp(safe)
            # a safe URL is plain ASCII without '"' or '\': its JSON is itself, quoted
            head, mid_fp, tail = parts
            return f'{head}"{safe}"{mid_fp}{fp}{tail}', fp
        env = Envelope.for_url(url, spider_name=self.spider_name, run=self.run)
        env.callback = self.callback
        return env.dumps(), env.fp


def _spider_method(spider: Any, cb: Any) -> bool:
    """Whether ``cb`` is a method of the spider itself: a queue entry names its callback, and must not be
    able to call a callable attribute the spider holds (a client, a helper object) with a response."""
    return inspect.ismethod(cb) and cb.__self__ is spider

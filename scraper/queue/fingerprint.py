"""Request fingerprints and queue ids: the 64-bit ``fp64`` SEEN/DONE dedup keys on, and its seeding fast path.

Why a module of its own: the fingerprint must equal Scrapy's (truncated) for every request, and
``fleet seed`` computes it for millions of URLs without building a Request; the fast path that does so,
and the check that it still agrees with the installed w3lib, are one concern, apart from the envelope's
wire format (``scraper.queue.envelope``, whose ``SeedEncoder`` uses ``fast_form``/``fast_fp``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from scrapy import Request
from scrapy.utils.request import fingerprint as scrapy_fingerprint
from w3lib.url import canonicalize_url, safe_url_string

from scraper.queue.entrycheck import EnvelopeError

__all__ = [
    "custom_fingerprinter",
    "exact_fingerprint",
    "fast_form",
    "fast_fp",
    "fp64",
    "new_ids",
    "url_fingerprint",
    "url_hash",
]


_DEFAULT_FINGERPRINTER = "scrapy.utils.request.RequestFingerprinter"
_NO_CUSTOM: Any = object()  # custom_fingerprinter's cache: not looked up yet


def custom_fingerprinter(spider: Any) -> Callable[[Request], bytes] | None:
    """The ``fingerprint`` of the spider's own ``REQUEST_FINGERPRINTER_CLASS`` (its ``custom_settings``, its
    project's settings), or None for Scrapy's default one. Looked up once per spider object.

    Why: a spider whose fingerprinter ignores a tracking parameter (``?sid=``) makes Scrapy fetch such URLs
    once; SEEN under the default fingerprint fetched and stored each of them. Built from the crawler's
    settings (``build_from_crawler``) when the crawl has not made it yet: ``fleet seed`` makes the spider on a
    Crawler that is never started (``scraper.cli.common.spider_instance``)."""
    if spider is None:
        return None
    found = spider.__dict__.get("_fleet_fingerprinter", _NO_CUSTOM)
    if found is not _NO_CUSTOM:
        return cast("Callable[[Request], bytes] | None", found)
    fn = None
    crawler: Any = getattr(spider, "crawler", None)
    settings = getattr(crawler, "settings", None)
    name = settings.get("REQUEST_FINGERPRINTER_CLASS") if settings is not None else None
    if name and name != _DEFAULT_FINGERPRINTER:
        from scrapy.utils.misc import build_from_crawler, load_object
        from scrapy.utils.request import RequestFingerprinter

        cls = load_object(name)
        if cls is not RequestFingerprinter:
            try:
                fpr = crawler.request_fingerprinter
            except (AttributeError, RuntimeError):  # not made yet: the crawl has not started
                fpr = None
            if not isinstance(fpr, cls):
                fpr = build_from_crawler(cls, crawler)
            fn = fpr.fingerprint
    spider.__dict__["_fleet_fingerprinter"] = fn
    return fn


def fp64(request: Request, spider: Any = None) -> str:
    """The request's 64-bit fingerprint as 16 hex chars.

    Scrapy's SHA1 request fingerprint, truncated: 64 bits keep SEEN/DONE at ~10 bytes per URL in Redis
    and collide with probability ~3e-8 at a billion URLs per run. A body-less GET whose URL qualifies
    for the seeding fast path (below) skips w3lib's canonicalisation: same value, a third of the time
    (every discovered request is fingerprinted on the worker's reactor thread). ``spider``: its own
    ``REQUEST_FINGERPRINTER_CLASS``, when it has one, decides instead (``custom_fingerprinter``; a digest
    shorter than 8 bytes is hashed first).
    """
    custom = custom_fingerprinter(spider)
    if custom is not None:
        try:
            digest = custom(request)
        except Exception as exc:  # the spider's code: refused as a request it cannot fingerprint, not a crash
            raise EnvelopeError(f"the spider's REQUEST_FINGERPRINTER_CLASS raised {type(exc).__name__}: "
                                f"{str(exc)[:200]}") from None
        if not isinstance(digest, bytes) or not digest:  # bytes(5) was five zero bytes: every request one
            raise EnvelopeError(f"the spider's REQUEST_FINGERPRINTER_CLASS returned {type(digest).__name__}, "
                                "not bytes (Scrapy's fingerprinter protocol)")
        return (digest if len(digest) >= 8 else hashlib.sha1(digest).digest())[:8].hex()
    if request.method == "GET" and not request.body:
        fast = fast_form(request.url)
        if fast is not None:
            return fast_fp(fast[0])
    return scrapy_fingerprint(request)[:8].hex()


def url_hash(url: str) -> str:
    """A short hash of a URL for places where raw URL text must not appear (keys, ids)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]

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


def fast_form(url: str) -> tuple[str, str] | None:
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


def exact_fingerprint(url: str) -> tuple[str, str]:
    """What Scrapy does: ``Request(url).url`` and the first 8 bytes of its SHA1 fingerprint, in hex."""
    safe = safe_url_string(url, "utf-8")
    if "://" not in safe:
        raise EnvelopeError(f"missing scheme in request url: {safe}")
    data = json.dumps({"body": "", "headers": {}, "method": "GET", "url": canonicalize_url(safe)}, sort_keys=True)
    return safe, hashlib.sha1(data.encode()).digest()[:8].hex()


def fast_fp(canonical: str) -> str:
    """``fp64`` of a plain GET for a URL already in canonical form (as ``fast_form`` returns it)."""
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
        return all(_CANONICAL_URL.fullmatch(u) and exact_fingerprint(u) == (u, fast_fp(u)) for u in samples)
    except ValueError:
        return False


def url_fingerprint(url: str) -> tuple[str, str]:
    """``(request.url, fp64(request))`` for ``Request(url)``, a plain GET, without building it."""
    fast = fast_form(url)
    if fast is not None:
        return fast[0], fast_fp(fast[0])
    return exact_fingerprint(url)


_FAST_OK = _premise_holds()


def new_ids(n: int) -> list[str]:
    """``n`` random 64-bit entry ids as 16 hex chars, from one urandom call rather than ``n``."""
    raw = os.urandom(8 * n).hex()
    return [raw[i : i + 16] for i in range(0, 16 * n, 16)]

"""Which URLs a worker may fetch: the scheme allow-list and the shape every URL must have.

Why an allow-list: Scrapy ships download handlers for ``file``, ``ftp``, ``s3`` and ``data`` next to
http(s). A fleet crawls pages it does not control, so a ``file:///etc/hostname`` link on one of them
would make the worker read its own files into ``raw/`` and the items; ``s3://`` would use its
credentials. Workers fetch only the schemes of ``FLEET_SCHEMES`` (default http and https, never
``file`` unless named), whatever ``FLEET_ALLOW_PRIVATE`` says. The same check runs where URLs enter:
``fleet seed`` (one line per rejected URL), where a callback yields a request (``runtime.discovered``:
skipped and counted) and before every download (``middlewares.schemes``: class D ``policy:scheme``, so a
queued or redirected URL is never fetched either). A URL without a host, with an unparsable host or
port, or too long is malformed (``policy:bad_url``): nothing a retry can fix.

The check is cheap on the hot path: one regex for the scheme and authority, and the authority's verdict
cached (a crawl sees few distinct hosts; the cache is bounded).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

from w3lib.url import safe_url_string

__all__ = [
    "BAD_URL",
    "DEFAULT_SCHEMES",
    "FETCHABLE_SCHEMES",
    "MAX_URL_LENGTH",
    "POLICY_SCHEME",
    "URLRefused",
    "check_url",
    "parse_schemes",
    "refusal",
    "url_lines",
]

DEFAULT_SCHEMES: tuple[str, ...] = ("http", "https")
# Schemes Scrapy has a download handler for; FLEET_SCHEMES may only name these.
FETCHABLE_SCHEMES: tuple[str, ...] = ("http", "https", "ftp", "file", "s3", "data")
_HOSTLESS = frozenset({"file", "data"})  # URLs of these schemes need no host (file:///path, data:...)

MAX_URL_LENGTH = 8192

POLICY_SCHEME = "policy:scheme"
BAD_URL = "policy:bad_url"

# scheme ':' then, for hierarchical URLs, '//' and the authority (up to the first '/', '?' or '#')
_HEAD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(//([^/?#]*))?")
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
# characters no host name may contain (an IPv6 literal is checked separately)
_HOST_BAD = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`\[\]/?#@%]")

_AUTHORITY: dict[str, str | None] = {}  # scheme://authority -> why it is malformed, or None
_AUTHORITY_MAX = 4096


class URLRefused(ValueError):
    """A URL Fleet will not fetch. ``reason`` is the DLQ reason (``policy:scheme`` or
    ``policy:bad_url``); the message says what is wrong in one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_schemes(raw: str) -> tuple[str, ...]:
    """FLEET_SCHEMES: a comma list of schemes, each one Scrapy can fetch. Raises ValueError."""
    schemes: list[str] = []
    for part in raw.split(","):
        scheme = part.strip().lower().removesuffix("://").removesuffix(":")
        if not scheme:
            continue
        if not _SCHEME.fullmatch(scheme) or scheme not in FETCHABLE_SCHEMES:
            raise ValueError(f"unknown scheme {scheme[:20]!r}: use a comma list of {', '.join(FETCHABLE_SCHEMES)}")
        if scheme not in schemes:
            schemes.append(scheme)
    if not schemes:
        raise ValueError(f"no scheme given: use a comma list of {', '.join(FETCHABLE_SCHEMES)}")
    return tuple(schemes)


def _authority_problem(scheme: str, authority: str) -> str | None:
    """Why ``scheme://authority`` cannot be fetched, or None. Parsed as urllib (and so Scrapy and
    Twisted) parses it."""
    if "@" in authority and scheme in ("http", "https"):  # ftp takes ftp_user/ftp_password meta instead
        # user:pass@host: Scrapy's downloader takes the userinfo for part of the host name and fails every
        # attempt (Twisted's "invalid hostname"); a site's credentials go in the spider's http_user and
        # http_pass (Scrapy's HttpAuthMiddleware), never in a URL that logs, stats and the DLQ carry
        return "URL carries credentials (user:pass@host): not fetched; set the spider's http_user/http_pass"
    hostport = authority.rpartition("@")[2]
    try:
        parts = urlsplit(f"{scheme}://{authority}/")
        host = parts.hostname
        _ = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError:
        return "malformed host or port (a port is a number from 0 to 65535; IPv6 hosts go in [])"
    if not host:
        if scheme in _HOSTLESS:
            return None
        return "URL has no host"
    if hostport.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "malformed IPv6 host"
        return None
    if _HOST_BAD.search(hostport.partition(":")[0]) or ":" in host:  # as written, before urllib's reading
        return "host contains a space or a character no host name may contain"
    if not host.isascii():
        # an international name: what Scrapy will connect to is w3lib's IDNA form of it (a name IDNA
        # cannot encode stays as it is there, and no resolver takes it)
        try:
            host = urlsplit(safe_url_string(f"{scheme}://{authority}/")).hostname or ""
        except ValueError:
            host = ""
        if not host or not host.isascii():
            return "host is not a valid international domain name"
    if _HOST_BAD.search(host):
        return "host contains a space or a character no host name may contain"
    return None


def refusal(url: object, schemes: Collection[str] = DEFAULT_SCHEMES) -> URLRefused | None:
    """Why ``url`` must not be fetched (a :class:`URLRefused` to raise or report), or None."""
    if not isinstance(url, str):
        return URLRefused(BAD_URL, "URL is not a string")
    if len(url) > MAX_URL_LENGTH:
        return URLRefused(BAD_URL, f"URL longer than {MAX_URL_LENGTH} characters")
    if not url.isascii():
        try:
            url.encode("utf-8")  # a lone surrogate ("\udcff" in JSON): no request, no Redis field can hold it
        except UnicodeEncodeError:
            return URLRefused(BAD_URL, "URL is not valid Unicode text")
    m = _HEAD.match(url)
    if m is None:
        return URLRefused(BAD_URL, "not an absolute URL (expected http:// or https://)")
    scheme = m.group(1).lower()
    if scheme not in schemes:
        return URLRefused(
            POLICY_SCHEME, f"{scheme[:20]}: URLs are not fetched (FLEET_SCHEMES allows {', '.join(schemes)})"
        )
    authority = m.group(3)
    if authority is None:
        if scheme in _HOSTLESS:
            return None
        return URLRefused(BAD_URL, f"not an absolute URL (expected {scheme}://host/...)")
    key = m.group(0)
    if key in _AUTHORITY:
        problem = _AUTHORITY[key]
    else:
        problem = _authority_problem(scheme, authority)
        if len(_AUTHORITY) >= _AUTHORITY_MAX:
            _AUTHORITY.clear()
        _AUTHORITY[key] = problem
    return None if problem is None else URLRefused(BAD_URL, problem)


def check_url(url: str, schemes: Collection[str] = DEFAULT_SCHEMES) -> str:
    """``url`` if it may be fetched; raises :class:`URLRefused` otherwise."""
    problem = refusal(url, schemes)
    if problem is not None:
        raise problem
    return url


_EOL = re.compile(rb"\r\n?|\n")
_CHUNK = 65536


def _raw_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The lines of ``stream``, ended by LF, CRLF or a lone CR (old Mac editors, some exports), without
    their ends; None for a line longer than ``limit`` bytes, whose bytes are dropped as they are read.
    Read ``_CHUNK`` bytes at a time: memory stays bounded whatever the file holds."""
    buf, skipping, cr = b"", False, False
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        if cr and chunk[:1] == b"\n":  # the LF of a CRLF split between two reads
            chunk = chunk[1:]
        buf += chunk
        start = 0
        for m in _EOL.finditer(buf):
            line = buf[start : m.start()]
            start = m.end()
            if skipping:
                skipping = False
                yield None
            else:
                yield line if len(line) <= limit else None
        cr = buf.endswith(b"\r")
        buf = buf[start:]
        if len(buf) > limit:
            skipping, buf = True, b""
    if skipping:
        yield None
    elif buf:
        yield buf if len(buf) <= limit else None


def url_lines(stream: BinaryIO) -> Iterator[str | URLRefused]:
    """The URLs of a seed file, one a line (blank lines and ``#`` comments skipped), or a
    :class:`URLRefused` for a line that is not UTF-8 or longer than any URL Fleet takes.

    Why bytes and a bounded read: a seed file is input like any other. A file in another encoding
    costs its bad lines (each reported), not the whole seed with a traceback, and a file without
    newlines (a binary by mistake) is read in bounded pieces, never held in memory whole. A line ends
    at LF, CRLF or a lone CR: a file with CR ends was read as one line, its URLs glued into one."""
    number = 0
    for line in _raw_lines(stream, MAX_URL_LENGTH + 2):  # the URL and some blanks around it
        number += 1
        if line is None:
            yield URLRefused(BAD_URL, f"line {number}: longer than {MAX_URL_LENGTH} characters")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield URLRefused(BAD_URL, f"line {number}: not UTF-8 text")
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        url = text.strip()
        if url and not url.startswith("#"):
            yield url

"""What a fetch of a site's robots.txt means for its requests, as data every worker of the fleet can share.

Why data and not a parser: with ``ROBOTSTXT_OBEY`` on, one worker fetches a site's robots.txt and stores
the outcome in Redis (:mod:`scraper.queue.robots`); the others parse the stored body themselves with the
spider's ROBOTSTXT_PARSER and user agent (middlewares.robots). A :class:`RobotsRecord` is that outcome: the
body (at most :data:`MAX_BODY` bytes, as Google reads 500 KiB) and what its status means, as versioned
JSON (never pickle: Redis contents are hostile input like any other).

What a status means (RFC 9309 section 2.3.1; Google's crawler behaves the same way):

* 2xx: the body's rules (``rules``);
* 4xx but 429, a redirect chain that ends unfollowed, a fetch refused as class D (a body larger than
  :data:`FETCH_MAXSIZE`, a non-public address, a scheme not crawled): no usable file, every URL allowed
  (``allow``), for the full TTL;
* 429, 5xx, a network error or timeout: the site cannot say (``unavailable``; a proxy's or the
  worker's own failure too, but that record is not shared: TTL 0). Its requests are not
  fetched meanwhile: they fail as class A ``robots:unavailable`` (:class:`RobotsUnavailable`), retried
  with backoff on the A budget, so a site whose robots.txt stays down ends in the DLQ as ``exhausted:A``
  instead of being crawled against its will. Scrapy's own middleware allows everything then; RFC 9309
  says "complete disallow". Such a record lives :data:`UNAVAILABLE_TTL` seconds at most, then one
  worker tries again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from scraper.policy.taxonomy import D, Verdict

__all__ = [
    "ALLOW",
    "FETCH_MAXSIZE",
    "MAX_BODY",
    "MAX_CRAWL_DELAY",
    "RULES",
    "UNAVAILABLE",
    "UNAVAILABLE_TTL",
    "RobotsRecord",
    "RobotsUnavailable",
    "record_for_error",
    "record_for_response",
]

RULES, ALLOW, UNAVAILABLE = "rules", "allow", "unavailable"
_KINDS = frozenset({RULES, ALLOW, UNAVAILABLE})
MAX_BODY = 500 * 1024  # bytes of robots.txt parsed (RFC 9309: at least 500 KiB); the rest is ignored
FETCH_MAXSIZE = 2 * 1024 * 1024  # a larger robots.txt is not downloaded at all (``allow``)
UNAVAILABLE_TTL = 60.0  # seconds before a robots.txt that could not be fetched is tried again
MAX_CRAWL_DELAY = 60.0  # a Crawl-delay above this is capped (a hostile file must not stall a worker)
_VERSION = 1


class RobotsUnavailable(Exception):
    """The site's robots.txt could not be fetched (5xx, 429, network error): its requests wait (class A
    ``robots:unavailable``, :func:`scraper.policy.taxonomy.classify_exception`). Not an IgnoreRequest:
    that would finish the request as ignored."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RobotsRecord:
    """One fetch of ``origin``/robots.txt: ``kind`` (RULES, ALLOW, UNAVAILABLE), the HTTP ``status`` (0:
    none), the ``body`` (RULES only), ``fetched_at`` (wall clock, shared by the fleet), ``ttl`` seconds,
    ``note`` (why: ``http:404``, ``net:TimeoutError``…) and the ``worker`` that fetched it."""

    kind: str
    status: int
    body: bytes
    fetched_at: float
    ttl: float
    note: str = ""
    worker: str = ""

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.ttl

    def fresh(self, now: float | None = None) -> bool:
        return self.expires_at > (time.time() if now is None else now)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def evidence(self) -> str:
        """The facts a DLQ entry cites: which version of the file decided (status, size, hash, time)."""
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.fetched_at))
        return (f"status={self.status} bytes={len(self.body)} sha256={self.sha256[:16]} fetched_at={at}"
                f"{' by=' + self.worker[:60] if self.worker else ''}")

    def dumps(self) -> str:
        return json.dumps({
            "v": _VERSION, "kind": self.kind, "status": self.status,
            # decoded as Scrapy's parsers decode it (UTF-8, undecodable bytes dropped): the same rules
            "body": self.body.decode("utf-8", "ignore"),
            "fetched_at": self.fetched_at, "ttl": self.ttl, "note": self.note[:200], "worker": self.worker[:100],
        }, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes | None) -> RobotsRecord | None:
        """The record, or None for anything else (absent, another version, garbled): refetched then."""
        if raw is None or len(raw) > 4 * MAX_BODY:
            return None
        try:
            d: Any = json.loads(raw)
            if not isinstance(d, dict) or d.get("v") != _VERSION or d.get("kind") not in _KINDS:
                return None
            body, status, fetched_at, ttl = d["body"], d["status"], d["fetched_at"], d["ttl"]
            if not isinstance(body, str) or type(status) is not int:
                return None
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (fetched_at, ttl)):
                return None
            return cls(str(d["kind"]), status, body.encode("utf-8")[:MAX_BODY], float(fetched_at), float(ttl),
                       str(d.get("note", ""))[:200], str(d.get("worker", ""))[:100])
        except (ValueError, KeyError, TypeError):
            return None


def record_for_response(status: int, body: bytes, *, ttl: float, now: float | None = None,
                        worker: str = "") -> RobotsRecord:
    """The record of a robots.txt response (redirects already followed)."""
    at = time.time() if now is None else now
    note = f"http:{status}"
    if 200 <= status < 300:
        return RobotsRecord(RULES, status, body[:MAX_BODY], at, ttl, note, worker)
    if status == 429 or status >= 500:
        return RobotsRecord(UNAVAILABLE, status, b"", at, min(ttl, UNAVAILABLE_TTL), note, worker)
    return RobotsRecord(ALLOW, status, b"", at, ttl, note, worker)  # 4xx; a 3xx nobody followed


def record_for_error(verdict: Verdict, *, ttl: float, now: float | None = None, worker: str = "") -> RobotsRecord:
    """The record of a robots.txt fetch that raised, from the taxonomy's verdict on the exception: class
    D (never fetchable: too large, refused address or scheme) allows all; a network error or timeout
    (``net:*``: the site's) is UNAVAILABLE for a short while. Anything else (a proxy's failure, the
    worker's own error, such as its engine closing) is UNAVAILABLE with TTL 0: this fetch only, never
    shared, so one worker's trouble does not hold the site for the fleet."""
    at = time.time() if now is None else now
    if verdict.cls == D:
        return RobotsRecord(ALLOW, 0, b"", at, ttl, verdict.reason, worker)
    shared = min(ttl, UNAVAILABLE_TTL) if verdict.reason.startswith("net:") else 0.0
    return RobotsRecord(UNAVAILABLE, 0, b"", at, shared, verdict.reason, worker)

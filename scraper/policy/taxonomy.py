"""The failure taxonomy: every response and download exception is A, B, C, D or ok.

Why one classifier: operators reason in these four classes (docs/architecture.md, "Failure taxonomy
and budgets"), budgets are kept per class, and ban detection must run before any drift check so a
challenge page served with 200 is never mistaken for layout drift.

Why here, pure, and not in the middleware: the decision is a function of a response or an exception
(Scrapy's ``get_retry_request`` shape), so the runtime, the catch-all downloader (scraper.worker.settle), the
watchdog and the tests share it without a crawler; :class:`middlewares.classify.ClassifyMiddleware` is
the thin downloader middleware that calls it. A verdict carries the facts the runtime acts on (the
class, the HTTP status it was decided on, Retry-After) as fields: nothing parses them back out of the
reason string, which is for people and the DLQ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from scrapy.http import HtmlResponse, Response
from twisted.internet import error as txerror
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

from scraper.policy.backoff import parse_retry_after
from scraper.policy.refused import Refused

__all__ = [
    "BAN_STATUS",
    "BLOCK_MARKERS",
    "DEFAULT_RULES",
    "HARD_STATUS",
    "OK",
    "TRANSIENT_STATUS",
    "WIDGET_MARKERS",
    "A",
    "B",
    "C",
    "D",
    "FailureClass",
    "Rules",
    "Verdict",
    "classify_exception",
    "classify_response",
]


class FailureClass(str, Enum):
    """The class of an outcome (docs/architecture.md, "Failure taxonomy and budgets").

    A ``str`` enum so that a member *is* its letter wherever the letter was used before: ``==`` with
    ``"A"``, dict keys (``Envelope.attempts``), JSON and log fields, f-strings (``fleet/class/A``).
    ``OK`` is the absence of a failure; it is a member so that every verdict's class has one type.
    """

    OK = "ok"
    A = "A"  # transient: retried with backoff on the A budget (FLEET_RETRY_MAX)
    B = "B"  # blocked: a ban or challenge; rotate the proxy on the B budget (FLEET_ROTATE_MAX)
    C = "C"  # drift: the page loaded but extraction broke (decided from the callback's output)
    D = "D"  # hard: never retried, straight to the DLQ

    def __str__(self) -> str:  # the letter, not "FailureClass.A", in f-strings and str() on every Python
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


OK, A, B, C, D = FailureClass.OK, FailureClass.A, FailureClass.B, FailureClass.C, FailureClass.D

TRANSIENT_STATUS = frozenset({408, 500, 502, 503, 504, 520, 521, 522, 523, 524})
BAN_STATUS = frozenset({403, 407, 429})
HARD_STATUS = frozenset({400, 401, 404, 405, 410, 451, 501, 505})  # 501/505: the server will never do it

# Challenge/CAPTCHA markers of the common bot-protection vendors, searched in the first 64 KiB. These only
# ever appear on a challenge or block page: Cloudflare's challenge (its orchestrate script, _cf_chl_opt; not
# /cdn-cgi/challenge-platform/[h/b/]scripts/jsd/…, which Cloudflare puts on every page of a site with its bot
# detection on), Incapsula's block page, PerimeterX's, DataDome's.
BLOCK_MARKERS = (
    re.compile(rb"/cdn-cgi/challenge-platform/h/[a-z]/orchestrate|_cf_chl_opt", re.I),
    re.compile(rb"Incapsula incident ID|_Incapsula_Resource\?[^\"'<>]{0,200}incident_id", re.I),
    re.compile(rb"px-captcha", re.I),
    re.compile(rb"captcha-delivery\.com", re.I),
)
# Markers that ordinary pages carry too: a reCAPTCHA, hCaptcha or Turnstile widget on a comment, contact or
# login form, Incapsula's script on every page of a site behind it, an article, a feed or a JSON field about
# CAPTCHAs. They mean a challenge only on an HTML page whose whole title is a challenge's ("Just a moment...",
# "Attention Required! | Cloudflare", "Robot Check"): found by two probes, ordinary small pages with a
# reCAPTCHA comment form, and a JSON API with a "captcha" field, were class B on every visit, then the DLQ. A
# challenge page titled otherwise is stored as a page, and a spider's required fields call it drift (C): seen.
WIDGET_MARKERS = (
    re.compile(rb"challenges\.cloudflare\.com/turnstile|cf-turnstile", re.I),
    re.compile(rb"_Incapsula_Resource", re.I),
    re.compile(rb"g-recaptcha|hcaptcha\.com|\bcaptcha\b", re.I),
)
_CHALLENGE_TITLE = re.compile(
    rb"<title[^>]{0,200}>\s*(?:just a moment|attention required|access denied|security check|robot check|"
    rb"are you a (?:robot|human)|verify(?:ing)? you are (?:a )?human|human verification|pardon our interruption|"
    rb"one more step|captcha|bot verification)(?:[\s.!?]|\xe2\x80\xa6|&[a-z]{2,8};)*(?:\|[^<]{0,80})?</title",
    re.I)

# Every built-in marker contains one of these words: pages without any of them (nearly all) skip the
# regex scans. One lower() and four substring searches cost ~90 µs on a 60 KB page; the scans ~1.7 ms.
_MARKER_HINTS = (b"captcha", b"challenge", b"turnstile", b"incapsula")  # _cf_chl_opt: with challenge-platform
_BUILTIN = frozenset(id(m) for m in BLOCK_MARKERS)

_TRANSIENT_EXC: tuple[type[BaseException], ...] = (
    txerror.TimeoutError,
    txerror.TCPTimedOutError,
    txerror.ConnectionRefusedError,
    txerror.ConnectionDone,
    txerror.ConnectError,
    txerror.ConnectionLost,
    txerror.DNSLookupError,
    ResponseFailed,
    ResponseNeverReceived,
    IOError,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the taxonomy decided about one outcome, and the facts the runtime acts on.

    ``status`` is the HTTP status the verdict was decided on (a ban, a transient or hard status), None
    when something else decided it (a challenge marker or header, a network error, a policy): a 429 or
    503 slows the whole domain down and a 429 does not burn the proxy, so the runtime reads it here.
    ``retry_after`` is the server's Retry-After in seconds (429, and transient statuses), if any.
    """

    cls: FailureClass
    reason: str
    retry_after: float | None = None
    detail: str = ""  # evidence beyond the reason (sizes, encoding, hops): DLQ ``detail``, history, logs
    status: int | None = None


def _retry_after(response: Response) -> float | None:
    raw = response.headers.get(b"Retry-After")
    return parse_retry_after(raw.decode("latin-1") if raw else None)


@dataclass(frozen=True)
class Rules:
    """The status sets and block markers; Scrapy settings can extend or replace them (see settings/)."""

    transient: frozenset[int] = TRANSIENT_STATUS
    ban: frozenset[int] = BAN_STATUS
    hard: frozenset[int] = HARD_STATUS
    markers: tuple[re.Pattern[bytes], ...] = BLOCK_MARKERS

    @classmethod
    def from_settings(cls, settings: Any) -> Rules:
        def ints(name: str, default: frozenset[int]) -> frozenset[int]:
            raw = settings.getlist(name) if settings.get(name) is not None else None
            return frozenset(int(x) for x in raw) if raw is not None else default

        extra = tuple(re.compile(m.encode() if isinstance(m, str) else m, re.I)
                      for m in settings.getlist("FLEET_EXTRA_BLOCK_MARKERS"))
        return cls(
            transient=ints("FLEET_TRANSIENT_STATUS", TRANSIENT_STATUS),
            ban=ints("FLEET_BAN_STATUS", BAN_STATUS),
            hard=ints("FLEET_HARD_STATUS", HARD_STATUS),
            markers=BLOCK_MARKERS + extra,
        )


DEFAULT_RULES = Rules()


_OK_VERDICTS: dict[int, Verdict] = {}


def _ok(status: int) -> Verdict:
    """The (immutable, shared) OK verdict of a status: one per page otherwise, built field by field."""
    v = _OK_VERDICTS.get(status)
    if v is None:
        v = _OK_VERDICTS[status] = Verdict(OK, f"http:{status}", status=status)
    return v


def classify_response(response: Response, rules: Rules = DEFAULT_RULES) -> Verdict:
    """Classify a downloaded response. Drift (C) is decided later, from the callback's output."""
    status = response.status
    if status == 407:
        return Verdict(B, f"http:{status}", status=status)
    if (response.headers.get(b"cf-mitigated") or b"").lower() == b"challenge":
        return Verdict(B, "challenge:cf-mitigated")
    if status in rules.ban:
        return Verdict(B, f"http:{status}", _retry_after(response) if status == 429 else None, status=status)
    if status in rules.transient:
        return Verdict(A, f"http:{status}", _retry_after(response), status=status)
    if status in rules.hard or (400 <= status < 500):
        return Verdict(D, f"http:{status}", status=status)
    if status >= 500 or status < 100:
        # 5xx, and a status line no server speaking HTTP sends (0, -5, 999: HTTP's codes are 100-599): a
        # broken server or middlebox, never a page; retried as transient, then the DLQ with the evidence
        # (a site whose odd code means a ban, 999 for one, goes in FLEET_BAN_STATUS)
        return Verdict(A, f"http:{status}", status=status)
    if 200 <= status < 300:
        head = response.body[:65536] if response.body else b""
        if not head:
            return _ok(status)
        low = head.lower()
        hinted = any(h in low for h in _MARKER_HINTS)
        # the widget markers join the block-page ones on a page titled as a challenge (they all hold a hint)
        titled = hinted and isinstance(response, HtmlResponse) and _CHALLENGE_TITLE.search(head) is not None
        for marker in (*rules.markers, *WIDGET_MARKERS) if titled else rules.markers:
            if (hinted or id(marker) not in _BUILTIN) and marker.search(head):
                return Verdict(B, f"challenge:{marker.pattern.decode('ascii', 'replace')[:40]}")
        return _ok(status)
    return Verdict(OK, f"http:{status}", status=status)  # 1xx/3xx: redirects are followed by Scrapy


# Scrapy 2.19 wraps Twisted's errors in its own types; both families are matched by name.
_CONNECT_ERRORS = frozenset({
    "ConnectionRefusedError", "DownloadConnectionRefusedError", "ConnectError", "DNSLookupError",
    "CannotResolveHostError", "NoRouteError", "TCPTimedOutError",
})
_TRANSIENT_NAMES = frozenset({
    "TimeoutError", "DownloadTimeoutError", "ConnectionResetError", "ConnectionLost", "ConnectionDone",
    "ResponseFailed", "ResponseNeverReceived", "DownloadFailedError", "PotentialDataLoss",
})


# Chromium's net errors that are the proxy's fault, not the site's (net/base/net_error_list.h)
_BROWSER_PROXY_ERRORS = frozenset({
    "ERR_PROXY_CONNECTION_FAILED", "ERR_TUNNEL_CONNECTION_FAILED", "ERR_PROXY_AUTH_UNSUPPORTED",
    "ERR_PROXY_AUTH_REQUESTED", "ERR_PROXY_CERTIFICATE_INVALID", "ERR_NO_SUPPORTED_PROXIES",
    "ERR_PROXY_HTTP_1_1_REQUIRED", "ERR_MANDATORY_PROXY_CONFIGURATION_FAILED",
    "ERR_UNEXPECTED_PROXY_AUTH", "ERR_PROXY_AUTH_REQUESTED_WITH_NO_CONNECTION",
})
# Chromium's net errors no retry can mend: the browser itself refuses the URL or its port
_BROWSER_HARD_ERRORS = frozenset({
    "ERR_UNSAFE_PORT", "ERR_UNSAFE_REDIRECT", "ERR_INVALID_URL", "ERR_DISALLOWED_URL_SCHEME",
    "ERR_UNKNOWN_URL_SCHEME", "ERR_INVALID_REDIRECT", "ERR_TOO_MANY_REDIRECTS",
})
_NET_ERROR = re.compile(r"(?:[\w.]+: )?net::(ERR_[A-Z0-9_]+)")


def _browser_net_error(exc: BaseException) -> str:
    """Chromium's error code from a Playwright navigation error: it leads the message, before the URL
    (``Page.goto: net::ERR_TUNNEL_CONNECTION_FAILED at https://...``), so a URL cannot fake one."""
    m = _NET_ERROR.match(str(getattr(exc, "message", "") or exc))
    return m.group(1) if m else ""


def classify_exception(exc: BaseException, *, proxied: bool = False) -> Verdict:
    """Download errors by type, never by message text (a URL may contain any word).

    Through a proxy, failing to *connect* is the proxy's fault (B: rotate); a timeout or a reset may
    be the target's, so it stays A.
    """
    if isinstance(exc, Refused):  # redirect loops, oversize or undecodable bodies: never retried
        return Verdict(D, exc.reason, detail=exc.detail)
    name = type(exc).__name__
    if name == "PrivateAddressRefused":  # FLEET_ALLOW_PRIVATE=0 (middlewares/private.py): never retried
        return Verdict(D, "policy:private_address")
    if name == "RobotsUnavailable":  # robots.txt 5xx/429/unreachable (scraper.policy.robots): wait, A budget
        return Verdict(A, "robots:unavailable", getattr(exc, "retry_after", None), detail=str(exc)[:300])
    if name == "URLRefused":  # a scheme FLEET_SCHEMES does not allow, or no host (middlewares/schemes.py)
        return Verdict(D, str(getattr(exc, "reason", "policy:scheme")))
    if name == "NotSupported":  # no download handler for the scheme: no retry will find one
        return Verdict(D, "policy:scheme")
    if name == "TunnelError":
        return Verdict(B, f"proxy:{name}")
    if type(exc).__module__.startswith("playwright"):
        # a rendered page's navigation error carries Chromium's code (all Playwright errors are one type)
        code = _browser_net_error(exc)
        if proxied and code in _BROWSER_PROXY_ERRORS:  # its proxy failed (scraper.worker.render)
            return Verdict(B, f"proxy:{code}")
        if code in _BROWSER_HARD_ERRORS:
            return Verdict(D, f"net:{code}")
        if code:
            return Verdict(A, f"net:{code}")
    if name in _CONNECT_ERRORS or isinstance(exc, (txerror.ConnectionRefusedError, txerror.ConnectError)):
        if proxied and not isinstance(exc, txerror.TimeoutError) and name != "TCPTimedOutError":
            return Verdict(B, f"proxy:{name}")
        return Verdict(A, f"net:{name}")
    if isinstance(exc, _TRANSIENT_EXC) or name in _TRANSIENT_NAMES:
        return Verdict(A, f"net:{name}")
    return Verdict(A, f"error:{name}")

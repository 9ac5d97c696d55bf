"""The failure taxonomy: every response and download exception is A, B, C, D or ok.

Why one classifier: operators reason in these four classes (docs/architecture.md, "Failure taxonomy
and budgets"), budgets are kept per class, and ban detection must run before any drift check so a
challenge page served with 200 is never mistaken for layout drift.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from twisted.internet import error as txerror
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

from middlewares.refused import Refused

OK = "ok"
A, B, C, D = "A", "B", "C", "D"

TRANSIENT_STATUS = frozenset({408, 500, 502, 503, 504, 520, 521, 522, 523, 524})
BAN_STATUS = frozenset({403, 407, 429})
HARD_STATUS = frozenset({400, 401, 404, 405, 410, 451})

# Challenge/CAPTCHA markers of the common bot-protection vendors, searched in the first 64 KiB.
BLOCK_MARKERS = (
    re.compile(rb"/cdn-cgi/challenge-platform/", re.I),
    re.compile(rb"challenges\.cloudflare\.com/turnstile", re.I),
    re.compile(rb"cf-turnstile", re.I),
    re.compile(rb"_Incapsula_Resource", re.I),
    re.compile(rb"px-captcha", re.I),
    re.compile(rb"captcha-delivery\.com", re.I),
    re.compile(rb"g-recaptcha|hcaptcha\.com|\bcaptcha\b", re.I),
)

# Every built-in marker contains one of these words: pages without any of them (nearly all) skip the
# seven regex scans. One lower() and four substring searches cost ~90 µs on a 60 KB page; the scans
# cost ~1.7 ms.
_MARKER_HINTS = (b"captcha", b"challenge", b"turnstile", b"incapsula")
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


@dataclass(frozen=True)
class Verdict:
    cls: str
    reason: str
    retry_after: float | None = None
    detail: str = ""  # evidence beyond the reason (sizes, encoding, hops): DLQ ``detail``, history, logs


def _retry_after(response: Response) -> float | None:
    from scraper.backoff import parse_retry_after

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
        v = _OK_VERDICTS[status] = Verdict(OK, f"http:{status}")
    return v


def classify_response(response: Response, rules: Rules = DEFAULT_RULES) -> Verdict:
    """Classify a downloaded response. Drift (C) is decided later, from the callback's output."""
    status = response.status
    if status == 407:
        return Verdict(B, f"http:{status}")
    if (response.headers.get(b"cf-mitigated") or b"").lower() == b"challenge":
        return Verdict(B, "challenge:cf-mitigated")
    if status in rules.ban:
        return Verdict(B, f"http:{status}", _retry_after(response) if status == 429 else None)
    if status in rules.transient:
        return Verdict(A, f"http:{status}", _retry_after(response))
    if status in rules.hard or (400 <= status < 500):
        return Verdict(D, f"http:{status}")
    if status >= 500:
        return Verdict(A, f"http:{status}")
    if 200 <= status < 300:
        head = response.body[:65536] if response.body else b""
        if not head:
            return _ok(status)
        low = head.lower()
        hinted = any(h in low for h in _MARKER_HINTS)
        for marker in rules.markers:
            if (hinted or id(marker) not in _BUILTIN) and marker.search(head):
                return Verdict(B, f"challenge:{marker.pattern.decode('ascii', 'replace')[:40]}")
        return _ok(status)
    return Verdict(OK, f"http:{status}")  # 1xx/3xx: redirects are followed by Scrapy


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
    if name == "URLRefused":  # a scheme FLEET_SCHEMES does not allow, or no host (middlewares/schemes.py)
        return Verdict(D, str(getattr(exc, "reason", "policy:scheme")))
    if name == "NotSupported":  # no download handler for the scheme: no retry will find one
        return Verdict(D, "policy:scheme")
    if name == "TunnelError":
        return Verdict(B, f"proxy:{name}")
    if proxied and type(exc).__module__.startswith("playwright"):
        code = _browser_net_error(exc)
        if code in _BROWSER_PROXY_ERRORS:  # a rendered page's proxy failed (scraper.render)
            return Verdict(B, f"proxy:{code}")
    if name in _CONNECT_ERRORS or isinstance(exc, (txerror.ConnectionRefusedError, txerror.ConnectError)):
        if proxied and not isinstance(exc, txerror.TimeoutError) and name != "TCPTimedOutError":
            return Verdict(B, f"proxy:{name}")
        return Verdict(A, f"net:{name}")
    if isinstance(exc, _TRANSIENT_EXC) or name in _TRANSIENT_NAMES:
        return Verdict(A, f"net:{name}")
    return Verdict(A, f"error:{name}")


VOID_MESSAGE = "fleet: speculative fetch dropped (its lease was not granted)"


async def _claimed(rt: Any, claim: Awaitable[bool], request: Request) -> None:
    """Wait for Redis to confirm a speculative lease (FleetRuntime._speculate); drop the fetch if not."""
    if not await claim:
        rt.drop_void(request)
        raise IgnoreRequest(VOID_MESSAGE)


class ClassifyMiddleware:
    """Downloader middleware: hands every non-ok outcome to the runtime, which settles the lease.

    A settled request raises IgnoreRequest so the spider callback never sees a block page or an error
    page; its retry (if any) is a new delivery from Redis, not an in-process loop.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.rules = Rules.from_settings(crawler.settings)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ClassifyMiddleware:
        return cls(crawler)

    def _runtime(self) -> Any:
        return getattr(self.crawler, "fleet", None)

    def process_response(self, request: Request, response: Response) -> Response | Coroutine[Any, Any, Response]:
        rt = self._runtime()
        if rt is not None and rt.drop_void(request):  # before the lookup: a later lease may reuse the id
            raise IgnoreRequest(VOID_MESSAGE)
        state = rt.state_for(request) if rt is not None else None
        if state is None:
            return response
        if state.claim is not None:  # a speculative lease Redis has not confirmed yet: wait for it
            return self._confirmed_response(rt, state, state.claim, request, response)
        return self._classify(rt, state, response)

    async def _confirmed_response(
        self, rt: Any, state: Any, claim: Awaitable[bool], request: Request, response: Response
    ) -> Response:
        await _claimed(rt, claim, request)
        return self._classify(rt, state, response)

    def _classify(self, rt: Any, state: Any, response: Response) -> Response:
        verdict = classify_response(response, self.rules)
        rt.fetched(state, response, verdict)
        if verdict.cls == OK:  # 3xx included: redirects are followed by Scrapy
            return response
        rt.fail(state, verdict, response=response)
        raise IgnoreRequest(f"fleet: {verdict.cls} {verdict.reason}")

    def process_exception(self, request: Request, exception: BaseException) -> Coroutine[Any, Any, None] | None:
        rt = self._runtime()
        if rt is not None and rt.drop_void(request):
            raise IgnoreRequest(VOID_MESSAGE)
        state = rt.state_for(request) if rt is not None else None
        if state is not None and state.claim is not None:
            return self._confirmed_exception(rt, state, state.claim, request, exception)
        self._settle_exception(rt, state, request, exception)
        return None

    async def _confirmed_exception(
        self, rt: Any, state: Any, claim: Awaitable[bool], request: Request, exception: BaseException
    ) -> None:
        await _claimed(rt, claim, request)
        self._settle_exception(rt, state, request, exception)

    def _settle_exception(self, rt: Any, state: Any, request: Request, exception: BaseException) -> None:
        if state is None or (isinstance(exception, IgnoreRequest) and not isinstance(exception, Refused)):
            if state is not None and not state.settled:
                rt.ignored(state, exception)
            return
        rt.fail(state, classify_exception(exception, proxied=bool(request.meta.get("proxy"))),
                response=exception.response if isinstance(exception, Refused) else None)
        raise IgnoreRequest(f"fleet: download error {type(exception).__name__}")

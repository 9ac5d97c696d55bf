"""The failure taxonomy on real Scrapy responses and Twisted exceptions (ban pages before drift)."""

from __future__ import annotations

import pytest
from scrapy.http import HtmlResponse
from twisted.internet import error as txerror

from scraper.policy.taxonomy import OK, A, B, D, Verdict, classify_exception, classify_response

URL = "https://shop.example/p/1"
PLAIN = b"<html><head><title>Widget</title></head><body><h1>Widget</h1><p>$9.99</p></body></html>"


def _resp(
    status: int = 200, body: bytes = PLAIN, headers: dict[str, str] | None = None
) -> HtmlResponse:
    return HtmlResponse(url=URL, status=status, body=body, headers=headers or {}, encoding="utf-8")


def test_200_is_ok() -> None:
    v = classify_response(_resp())
    assert v.cls == OK
    assert v.retry_after is None


@pytest.mark.parametrize("status", [403, 429, 407])
def test_ban_statuses_are_b(status: int) -> None:
    v = classify_response(_resp(status))
    assert v.cls == B
    assert str(status) in v.reason


def test_429_carries_retry_after() -> None:
    v = classify_response(_resp(429, headers={"Retry-After": "30"}))
    assert v.cls == B
    assert v.retry_after == 30.0


def test_429_without_or_with_junk_retry_after() -> None:
    assert classify_response(_resp(429)).retry_after is None
    assert classify_response(_resp(429, headers={"Retry-After": "later"})).retry_after is None


@pytest.mark.parametrize("status", [200, 403, 503])
@pytest.mark.parametrize("value", ["challenge", "Challenge"])
def test_cf_mitigated_challenge_is_b(status: int, value: str) -> None:
    v = classify_response(_resp(status, headers={"cf-mitigated": value}))
    assert v.cls == B


@pytest.mark.parametrize(
    "snippet",
    [
        b'<script src="/cdn-cgi/challenge-platform/h/b/orchestrate/jsch/v1"></script>',
        b'<script src="/_Incapsula_Resource?SWJIYLWA=5074a744"></script>',
        b'<div id="px-captcha"></div>',
        b'<script src="https://ct.captcha-delivery.com/c.js"></script>',
        b'<script src="https://challenges.cloudflare.com/turnstile/v0/api.js"></script>',
        b'<div class="cf-turnstile" data-sitekey="0x4AAA"></div>',
    ],
    ids=["cloudflare", "incapsula", "perimeterx", "datadome", "turnstile-js", "turnstile-div"],
)
def test_200_challenge_bodies_are_b(snippet: bytes) -> None:
    body = b"<html><head><title>Just a moment...</title></head><body>" + snippet + b"</body></html>"
    v = classify_response(_resp(200, body=body))
    assert v.cls == B, v
    assert v.reason.startswith("challenge:")


@pytest.mark.parametrize("snippet", [
    b'<SCRIPT SRC="/CDN-CGI/CHALLENGE-PLATFORM/H/b/orchestrate/x"></SCRIPT>', b"<SCRIPT>window._CF_CHL_OPT={cType:'managed'};a.src='/CDN-CGI/CHALLENGE-PLATFORM/h/b/x';</SCRIPT>",
    b'<DIV ID="PX-CAPTCHA"></DIV>', b'<iframe src="https://geo.CAPTCHA-DELIVERY.com/captcha/"></iframe>',
    b"<p>Request unsuccessful. INCAPSULA INCIDENT ID: 0-123</p>",
])
def test_block_page_markers_match_in_any_case_and_on_any_size(snippet: bytes) -> None:
    body = b"<html><body>" + b"<p>filler</p>" * 4000 + snippet + b"</body></html>"
    assert classify_response(_resp(200, body=body)).cls == B


WIDGETS = [
    b'<DIV CLASS="G-RECAPTCHA"></DIV>', b'<script src="https://HCAPTCHA.COM/1/api.js"></script>',
    b"<p>Please solve the CAPTCHA</p>", b'<script src="/_incapsula_resource?SWJIYLWA=1"></script>',
    b'<div class="cf-turnstile"></div>',
]


@pytest.mark.parametrize("snippet", WIDGETS)
@pytest.mark.parametrize("title", [b"Just a moment...", b"Attention Required! | Cloudflare", b"Robot Check",
                                   b"Access Denied", b"Just a moment&hellip;"])
def test_a_widget_on_a_page_titled_as_a_challenge_is_one(snippet: bytes, title: bytes) -> None:
    page = b"<html><head><title>" + title + b"</title></head><body>" + b"<p>x</p>" * 4000 + snippet
    assert classify_response(_resp(200, body=page)).cls == B


@pytest.mark.parametrize("snippet", WIDGETS)
@pytest.mark.parametrize("title", [b"A post", b"Access denied: why websites block you",
                                   b"Security check-ups for your router"])
def test_a_small_page_with_a_widget_is_a_page(snippet: bytes, title: bytes) -> None:
    """Round 2 of the probes: a 2.4 KB blog post with a reCAPTCHA comment form was B (then the DLQ) under the
    first rule (widgets counted on any page under 16 KiB); so were articles titled like a challenge."""
    page = b"<html><head><title>" + title + b"</title></head><body><p>text</p>" + snippet + b"</body></html>"
    assert classify_response(_resp(200, body=page)).cls == OK


def test_json_or_xml_mentioning_captcha_is_a_page() -> None:
    from scrapy.http import TextResponse, XmlResponse

    api = TextResponse(URL, status=200, body=b'{"page": 1, "captcha": false, "items": []}')
    feed = XmlResponse(URL, status=200, body=b"<rss><title>Captcha</title><item>Why CAPTCHA puzzles</item></rss>")
    assert classify_response(api).cls == OK and classify_response(feed).cls == OK


@pytest.mark.parametrize("snippet", [*WIDGETS,
                                     b'<script src="/cdn-cgi/challenge-platform/scripts/jsd/main.js"></script>',
                                     b'<script src="/cdn-cgi/challenge-platform/h/b/scripts/jsd/13c98df4ef2d/main.js">'])
def test_an_ordinary_page_with_a_form_widget_or_bot_detection_script_is_ok(snippet: bytes) -> None:
    """A comment form protected by reCAPTCHA, Cloudflare's bot-detection script (on every page of a site with
    it on), Incapsula's script, an article about CAPTCHAs: class B on every visit before, then the DLQ."""
    body = b"<html><head><title>A post</title></head><body>" + b"<p>article text</p>" * 2000 + snippet
    assert classify_response(_resp(200, body=body)).cls == OK


def test_marker_beyond_first_64k_is_not_scanned() -> None:
    body = b"<html><body>" + b"x" * 70_000 + b'<div id="px-captcha"></div></body></html>'
    assert classify_response(_resp(200, body=body)).cls == OK


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 522, 524])
def test_transient_statuses_are_a(status: int) -> None:
    v = classify_response(_resp(status))
    assert v.cls == A
    assert str(status) in v.reason


def test_503_with_retry_after_carries_it() -> None:
    v = classify_response(_resp(503, headers={"Retry-After": "45"}))
    assert v.cls == A and v.retry_after == 45.0


@pytest.mark.parametrize("status", [404, 410, 401, 451])
def test_hard_statuses_are_d(status: int) -> None:
    v = classify_response(_resp(status))
    assert v.cls == D
    assert str(status) in v.reason


@pytest.mark.parametrize(
    "exc",
    [
        txerror.TimeoutError(),
        txerror.ConnectionRefusedError(),
        txerror.DNSLookupError("shop.example"),
        txerror.TCPTimedOutError(),
        txerror.ConnectionLost(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_exceptions_are_a(exc: BaseException) -> None:
    assert classify_exception(exc).cls == A


def test_tunnel_error_is_b() -> None:
    class TunnelError(Exception):
        """Shaped like scrapy's HTTP11 TunnelError (the proxy refused CONNECT)."""

    v = classify_exception(TunnelError("Could not open CONNECT tunnel with proxy 10.0.0.1:8080"))
    assert v.cls == B
    # the class name alone is enough, whatever the message says
    assert classify_exception(TunnelError("403 Forbidden")).cls == B


def test_a_rendered_page_whose_proxy_failed_is_b_and_a_url_cannot_fake_it() -> None:
    from playwright._impl._errors import Error as PlaywrightError

    failed = PlaywrightError("Page.goto: net::ERR_TUNNEL_CONNECTION_FAILED at https://shop.test/p/1")
    assert classify_exception(failed, proxied=True).cls == B
    assert classify_exception(failed, proxied=True).reason == "proxy:ERR_TUNNEL_CONNECTION_FAILED"
    assert classify_exception(failed, proxied=False).cls == A  # no proxy in the way: the site's network
    dns = PlaywrightError("Page.goto: net::ERR_NAME_NOT_RESOLVED at http://x.test/net::ERR_PROXY_CONNECTION_FAILED")
    assert classify_exception(dns, proxied=True).cls == A  # the code that leads the message counts


def test_a_rendered_pages_network_error_keeps_chromiums_code() -> None:
    """A probe: through the browser, a refused connection and a port Chromium refuses both ended as
    ``error:Error`` (every Playwright error is one type), and the refused port was retried to exhaustion."""
    from playwright._impl._errors import Error as PlaywrightError
    from playwright._impl._errors import TimeoutError as PlaywrightTimeout

    refused = PlaywrightError("Page.goto: net::ERR_CONNECTION_REFUSED at http://127.0.0.1:9/")
    assert classify_exception(refused) == Verdict(A, "net:ERR_CONNECTION_REFUSED")
    unsafe = PlaywrightError("Page.goto: net::ERR_UNSAFE_PORT at http://127.0.0.1:6000/")
    assert classify_exception(unsafe) == Verdict(D, "net:ERR_UNSAFE_PORT")
    assert classify_exception(unsafe, proxied=True).cls == D
    slow = PlaywrightTimeout("Page.goto: Timeout 4000ms exceeded.")
    assert classify_exception(slow).cls == A  # no code: as before
    faked = PlaywrightError("Page.goto: Timeout at http://x.test/net::ERR_UNSAFE_PORT")
    assert classify_exception(faked).cls == A  # a URL cannot fake a code


def test_rules_are_configurable_in_settings() -> None:
    from scrapy.settings import Settings

    from scraper.policy.taxonomy import Rules

    rules = Rules.from_settings(Settings({
        "FLEET_EXTRA_BLOCK_MARKERS": [r"are you a robot\?"],
        "FLEET_HARD_STATUS": [404, 410, 418],
        "FLEET_TRANSIENT_STATUS": [503],
    }))
    assert classify_response(_resp(200, body=b"<p>Are you a robot?</p>"), rules).cls == B
    assert classify_response(_resp(200, body=b"<p>Are you a robot?</p>")).cls == OK  # defaults unchanged
    assert classify_response(_resp(418), rules).cls == D
    assert classify_response(_resp(500), rules).cls == A  # other 5xx stay transient


# -- speculative leases: nothing is settled before Redis confirmed the lease -------------------------


class _Rt:
    """The runtime surface ClassifyMiddleware uses, recording what it was told."""

    def __init__(self, state: object) -> None:
        self.state = state
        self.calls: list[str] = []
        self.void: set[str] = set()

    def state_for(self, request: object) -> object:
        return self.state

    def drop_void(self, request: object) -> bool:
        return False

    def fetched(self, state: object, response: object, verdict: object) -> None:
        self.calls.append("fetched")

    def fail(self, state: object, verdict: object, response: object) -> None:
        self.calls.append("fail")

    def ignored(self, state: object, exc: object) -> None:
        self.calls.append("ignored")


def _classify_mw(state: object) -> tuple[object, _Rt]:
    from types import SimpleNamespace

    from scrapy.settings import Settings

    from middlewares.classify import ClassifyMiddleware

    rt = _Rt(state)
    return ClassifyMiddleware(SimpleNamespace(settings=Settings(), fleet=rt)), rt  # type: ignore[arg-type]


@pytest.mark.parametrize("granted", [True, False])
def test_response_of_an_unconfirmed_lease_waits_for_the_claim(granted: bool) -> None:
    import asyncio
    from types import SimpleNamespace

    from scrapy.exceptions import IgnoreRequest

    async def main() -> None:
        claim: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        state = SimpleNamespace(claim=claim, settled=False)
        mw, rt = _classify_mw(state)
        resp = _resp(404)
        pending = mw.process_response(resp.request, resp)  # type: ignore[attr-defined]
        assert asyncio.iscoroutine(pending)
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0)
        assert rt.calls == []  # nothing classified or settled while Redis has not answered
        state.claim = None if granted else claim
        claim.set_result(granted)
        if granted:
            with pytest.raises(IgnoreRequest):  # a 404: settled as D through the runtime
                await task
            assert rt.calls == ["fetched", "fail"]
        else:
            with pytest.raises(IgnoreRequest, match="speculative"):
                await task
            assert rt.calls == []  # dropped: not ours to settle

    asyncio.run(main())


def test_the_title_check_is_linear_on_a_hostile_head() -> None:
    """64 KiB of unclosed <title plus a hint word: the title pattern must not backtrack quadratically (review)."""
    import time

    body = b"captcha" + b"<title" * 11_000
    t = time.perf_counter()
    assert classify_response(_resp(200, body=body)).cls == OK
    assert time.perf_counter() - t < 0.1

"""The classifier on arbitrary responses and exceptions (hypothesis): every input gets a verdict of one of
the five classes, and nothing it is given makes it raise (a hostile site controls status, headers and
body; an exception's type and text come from wherever it was raised)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scrapy.http import HtmlResponse, Response, TextResponse
from scrapy.settings import Settings
from twisted.internet import error as txerror

from scraper.policy.taxonomy import OK, A, B, C, D, Rules, classify_exception, classify_response
from scraper.policy.urls import URLRefused

_HEADER_NAMES = st.sampled_from(["Retry-After", "cf-mitigated", "Content-Type", "Server", "Location", "X-Any"])
_HEADER_VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"30", b"-1", b"1e400", b"nan", b"inf", b"Wed, 21 Oct 2015 07:28:00 GMT",
                     b"Mon, 01 Jan 0001 00:00:00 GMT", b"Fri, 31 Dec 9999 23:59:59 GMT", b"challenge",
                     b"CHALLENGE", b"\xff\xfe"]),
)
_BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"<html>captcha</html>", b"/cdn-cgi/challenge-platform/", b"g-recaptcha", b""]),
)
_CUSTOM = Rules.from_settings(Settings({"FLEET_EXTRA_BLOCK_MARKERS": ["x+y", "(?i)denied"],
                                         "FLEET_BAN_STATUS": [418]}))


@settings(max_examples=500, deadline=None)
@given(status=st.integers(min_value=0, max_value=999),
       headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=4),
       body=_BODIES,
       kind=st.sampled_from([Response, TextResponse, HtmlResponse]))
def test_any_response_gets_a_verdict(status: int, headers: dict[str, bytes], body: bytes, kind: type[Response]) -> None:
    response = kind(url="https://shop.example/p", status=status, headers=headers, body=body)
    for rules in (None, _CUSTOM):
        verdict = classify_response(response) if rules is None else classify_response(response, rules)
        assert verdict.cls in (OK, A, B, C, D) and verdict.reason
        if verdict.retry_after is not None:
            assert 0 < verdict.retry_after <= 3600


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


_EXCEPTIONS = st.one_of(
    st.builds(lambda cls, text: cls(text), st.sampled_from([
        ValueError, OSError, ConnectionResetError, TimeoutError, RuntimeError, KeyError, txerror.DNSLookupError,
        txerror.TimeoutError, txerror.ConnectionRefusedError, txerror.ConnectionLost, _Unprintable, Exception,
    ]), st.text(max_size=40)),
    st.builds(lambda text: URLRefused("policy:scheme", text), st.text(max_size=40)),
    st.builds(lambda name, text: type(name, (Exception,), {"__module__": "playwright._impl._errors"})(text),
              st.sampled_from(["Error", "TimeoutError", "TunnelError", "PrivateAddressRefused", "URLRefused"]),
              st.text(max_size=60) | st.just("Page.goto: net::ERR_TUNNEL_CONNECTION_FAILED at http://x/")),
)


@settings(max_examples=500, deadline=None)
@given(exc=_EXCEPTIONS, proxied=st.booleans())
def test_any_exception_gets_a_verdict(exc: BaseException, proxied: bool) -> None:
    verdict = classify_exception(exc, proxied=proxied)
    assert verdict.cls in (A, B, D) and verdict.reason


def test_url_refused_is_class_d_with_its_reason() -> None:
    assert classify_exception(URLRefused("policy:scheme", "file: URLs are not fetched")).cls == D
    assert classify_exception(URLRefused("policy:bad_url", "URL has no host")).reason == "policy:bad_url"

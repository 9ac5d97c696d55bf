"""Typed refusals (issue #14): redirect loops and limits, decompression limits and corrupt encodings.

Pure unit tests on real Scrapy middlewares (built from a real crawler's settings) and real compressed
bodies: what each raises, and how the taxonomy classifies it. The end-to-end settlement of these requests
(objects, DLQ, RSS) is tests/integration/test_hostile_content.py.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli
import pytest
from backports import zstd
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.http import HtmlResponse, Response
from scrapy.utils.test import get_crawler

from middlewares.decompress import DecompressMiddleware
from middlewares.redirect import FleetMetaRefreshMiddleware, FleetRedirectMiddleware
from scraper.policy.refused import BodyTooLarge, BodyUndecodable, RedirectLoop, Refused, TooManyRedirects
from scraper.policy.taxonomy import A, D, classify_exception
from scraper.worker.settle import verdict_for

MiB = 1 << 20
LIMIT = 1 * MiB
PAGE = b"<html><head><title>t</title></head><body><h1 class='token'>x</h1></body></html>"


def _crawler(**settings: Any) -> Any:
    base = {"DOWNLOAD_MAXSIZE": LIMIT, "DOWNLOAD_WARNSIZE": LIMIT // 4, "REDIRECT_MAX_TIMES": 3}
    return get_crawler(settings_dict={**base, **settings})


def _decompress(body: bytes, encoding: str, **meta: Any) -> Response:
    mw = DecompressMiddleware.from_crawler(_crawler())
    req = Request("http://a.test/p", meta=meta)
    resp = Response("http://a.test/p", body=body, headers={"Content-Encoding": encoding,
                                                            "Content-Type": "text/html"}, request=req)
    out = mw.process_response(req, resp)
    assert isinstance(out, Response)
    return out


def _bomb(encoding: str, size: int = 8 * MiB) -> bytes:
    zeros = bytes(size)
    if encoding == "gzip":
        return gzip.compress(zeros)
    if encoding == "deflate":
        return zlib.compress(zeros)
    if encoding == "br":
        return bytes(brotli.compress(zeros))
    return bytes(zstd.compress(zeros))


ENCODINGS = ("gzip", "deflate", "br", "zstd")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_page_in_every_encoding_is_decoded(encoding: str) -> None:
    packed = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress}
    out = _decompress(bytes(packed[encoding](PAGE)), encoding)
    assert out.body == PAGE
    assert isinstance(out, HtmlResponse)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_bomb_stops_at_the_limit_and_is_body_too_large(encoding: str) -> None:
    body = _bomb(encoding)
    assert len(body) < 64 * 1024  # a few KB that would be 8 MiB decoded
    with pytest.raises(BodyTooLarge) as info:
        _decompress(body, encoding)
    exc = info.value
    assert isinstance(exc, IgnoreRequest)  # outside a worker: dropped as Scrapy did
    assert f"encoding={encoding}" in exc.detail and f"compressed={len(body)}" in exc.detail
    assert f"limit={LIMIT}" in exc.detail and "stage=decode" in exc.detail
    # decoding stopped one 64 KiB step past the limit, not at 8 MiB
    decoded = int(exc.detail.split("decompressed>")[1].split()[0])
    assert LIMIT < decoded <= LIMIT + 64 * 1024
    assert exc.response is not None and exc.response.status == 200
    assert exc.classified is False  # the classifier (950) never saw it: the settler records the fetch
    assert exc.__context__ is None and exc.__cause__ is None  # the partly decoded output is not kept alive
    v = classify_exception(exc)
    assert (v.cls, v.reason, v.detail) == (D, "body:too_large", exc.detail)


def test_the_request_meta_limit_wins() -> None:
    with pytest.raises(BodyTooLarge):
        _decompress(_bomb("gzip", 3 * MiB), "gzip", download_maxsize=2 * MiB)
    assert len(_decompress(_bomb("gzip", 3 * MiB), "gzip", download_maxsize=4 * MiB).body) == 3 * MiB


@pytest.mark.parametrize("encoding,body", [
    ("gzip", b"this is not gzip at all"),
    ("x-gzip", b"\x1f\x8b\x08 but then garbage"),
    ("deflate", b"\x78\x9c" + b"\xff" * 50),
    ("br", b"\xff\xfe\xfd not brotli"),
    ("zstd", b"\x28\xb5\x2f\xfd" + b"\x00\xff" * 20),
])
def test_a_corrupt_body_is_body_undecodable(encoding: str, body: bytes) -> None:
    with pytest.raises(BodyUndecodable) as info:
        _decompress(body, encoding)
    exc = info.value
    assert f"encoding={encoding}" in exc.detail and "error=" in exc.detail
    assert exc.__context__ is None
    assert classify_exception(exc).reason == "body:undecodable"


def _page(ctype: str, body: bytes = PAGE) -> Response:
    mw = DecompressMiddleware.from_crawler(_crawler())
    req = Request("http://a.test/p")
    out = mw.process_response(req, HtmlResponse("http://a.test/p", body=body, headers={"Content-Type": ctype},
                                                 request=req))
    assert isinstance(out, Response)
    return out


@pytest.mark.parametrize("declared", [
    ("text/html; charset=rot13", PAGE), ("text/html; charset=hex", PAGE), ("text/html; charset=base64", PAGE),
    ("text/html; charset=zlib", PAGE), ("text/html; charset=bz2", PAGE), ("text/html; charset=idna", PAGE),
    ("text/html; charset=undefined", PAGE),
    ("text/html", b'<html><head><meta charset="rot13"></head><body>x</body></html>'),
])
def test_a_page_in_a_codec_that_decodes_no_page_is_body_undecodable(declared: tuple[str, bytes]) -> None:
    """Found by a hostile probe: every response.text raised (LookupError, UnicodeError), so the page was
    retried as A error:LookupError, or called a bad redirect by the meta-refresh check."""
    with pytest.raises(BodyUndecodable) as info:
        _page(*declared)
    assert info.value.detail.startswith("charset") and classify_exception(info.value).cls is D


def test_a_bogus_charset_on_a_ban_or_robots_fetch_is_left_to_the_taxonomy_and_the_parser() -> None:
    """A 403/429/503 keeps its class (rotation, retry); robots.txt's parser reads bytes (review)."""
    from scrapy.http.request import NO_CALLBACK

    mw = DecompressMiddleware.from_crawler(_crawler())
    for status, req in ((403, Request("http://a.test/p")), (200, Request("http://a.test/robots.txt",
                                                                          callback=NO_CALLBACK))):
        resp = HtmlResponse(req.url, status=status, body=PAGE, headers={"Content-Type": "text/html; charset=rot13"},
                            request=req)
        assert mw.process_response(req, resp) is resp


@pytest.mark.parametrize("ctype", ["text/html; charset=windows-1252", "text/html; charset=shift_jis",
                                   "text/html; charset=no-such-codec", "text/html"])
def test_a_page_in_a_real_or_unknown_charset_passes(ctype: str) -> None:
    assert _page(ctype).text.startswith("<html>")


def test_a_redirect_body_is_not_decoded() -> None:
    mw = DecompressMiddleware.from_crawler(_crawler())
    req = Request("http://a.test/p")
    resp = Response("http://a.test/p", status=302, body=b"garbage",
                    headers={"Content-Encoding": "gzip", "Location": "/q"}, request=req)
    assert mw.process_response(req, resp) is resp


# ------------------------------------------------------------------------------------------------
# redirects
# ------------------------------------------------------------------------------------------------


def _redirect_mw() -> FleetRedirectMiddleware:
    return FleetRedirectMiddleware.from_crawler(_crawler())


def _hop(mw: Any, request: Request, location: str, status: int = 302) -> Request:
    resp = Response(request.url, status=status, headers={"Location": location}, request=request)
    out = mw.process_response(request, resp)
    assert isinstance(out, Request), out
    return out


def test_a_redirect_to_itself_is_a_loop_at_once() -> None:
    mw = _redirect_mw()
    req = Request("http://a.test/loop")
    resp = Response(req.url, status=302, headers={"Location": "/loop"}, request=req)
    with pytest.raises(RedirectLoop) as info:
        mw.process_response(req, resp)
    assert info.value.detail == "hops=1 back_to_hop=0 reason=302"
    assert info.value.response is resp  # status and Location for the DLQ entry
    v = classify_exception(info.value)
    assert (v.cls, v.reason) == (D, "redirect:loop")


def test_a_ping_pong_is_a_loop_on_its_first_repeat() -> None:
    mw = _redirect_mw()
    b = _hop(mw, Request("http://a.test/a"), "/b")
    with pytest.raises(RedirectLoop) as info:
        _hop(mw, b, "/a")
    assert "hops=2 back_to_hop=0" in info.value.detail


def test_a_post_303_to_its_own_url_is_followed() -> None:
    mw = _redirect_mw()
    get = _hop(mw, Request("http://a.test/form", method="POST", body=b"x=1"), "/form", status=303)
    assert (get.method, get.url) == ("GET", "http://a.test/form")


def test_a_chain_past_redirect_max_times_is_too_many() -> None:
    mw = _redirect_mw()
    req = Request("http://a.test/c/0")
    for i in range(1, 4):  # REDIRECT_MAX_TIMES = 3 hops are followed
        req = _hop(mw, req, f"/c/{i}")
    with pytest.raises(TooManyRedirects) as info:
        _hop(mw, req, "/c/4")
    assert info.value.detail == "hops=4 limit=3 reason=302"
    assert classify_exception(info.value).reason == "redirect:too_many"


def test_a_meta_refresh_loop_is_a_loop() -> None:
    mw = FleetMetaRefreshMiddleware.from_crawler(_crawler())
    req = Request("http://a.test/r")
    body = b'<html><head><meta http-equiv="refresh" content="0;url=/r"></head></html>'
    with pytest.raises(RedirectLoop):
        mw.process_response(req, HtmlResponse(req.url, body=body, request=req))


# ------------------------------------------------------------------------------------------------
# the catch-all's verdicts
# ------------------------------------------------------------------------------------------------


def test_an_unknown_ignore_request_is_class_d_dropped() -> None:
    v = verdict_for(IgnoreRequest("max redirections reached"), Request("http://a.test/"))
    assert (v.cls, v.reason, v.detail) == (D, "dropped:IgnoreRequest", "max redirections reached")


def test_any_other_error_goes_through_the_taxonomy() -> None:
    v = verdict_for(ValueError("boom"), Request("http://a.test/"))
    assert (v.cls, v.reason) == (A, "error:ValueError")
    refused = BodyTooLarge("content_length=9 limit=1 stage=download")
    assert isinstance(refused, Refused)
    assert verdict_for(refused, Request("http://a.test/")).reason == "body:too_large"


def test_a_malformed_location_is_bad_redirect_not_a_retry() -> None:
    request = Request("http://a.example/start")
    resp = Response(request.url, status=302, headers={"Location": "http://[::1/"}, request=request)
    with pytest.raises(Refused) as info:
        _redirect_mw().process_response(request, resp)
    verdict = classify_exception(info.value)
    assert (verdict.cls, verdict.reason) == (D, "redirect:bad_location")


def test_meta_limits_from_an_entry_only_tighten_the_spiders() -> None:
    from middlewares.schemes import SchemeMiddleware

    mw = SchemeMiddleware.from_crawler(get_crawler(settings_dict={"DOWNLOAD_TIMEOUT": 30, "DOWNLOAD_MAXSIZE": 1000,
                                                                 "DOWNLOAD_WARNSIZE": 100}))
    hostile = Request("http://a.example/", meta={"download_timeout": 1e12, "download_maxsize": 0,
                                                 "download_warnsize": -1})
    mw.process_request(hostile)
    assert (hostile.meta["download_timeout"], hostile.meta["download_maxsize"], hostile.meta["download_warnsize"]) \
        == (30, 1000, 100)
    modest = Request("http://a.example/", meta={"download_timeout": 5, "download_maxsize": 10})
    mw.process_request(modest)
    assert (modest.meta["download_timeout"], modest.meta["download_maxsize"]) == (5, 10)

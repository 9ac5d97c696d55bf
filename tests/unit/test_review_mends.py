"""The mends of a review of the hostile-probe fixes (session of 2026-12-07): an unfollowed 3xx is refused only
where Scrapy would not hand it to the spider and after a meta refresh had its turn; redaction is exact on
URLs; encoding, store URIs, log levels and breaker domains accept what they accepted before."""

from __future__ import annotations

import json
import math

import pytest
import scrapy
from scrapy.http import HtmlResponse, Request
from scrapy.utils.test import get_crawler

from middlewares.redirect import UnfollowedRedirectMiddleware
from scraper.cli.oncall import _breaker_domain
from scraper.infra.config import FleetConfig
from scraper.infra.redact import redact_data
from scraper.policy.refused import BadRedirect, RedirectScheme, UnhandledRedirect
from scraper.policy.urls import refusal
from scraper.store.backends import check_store_uri
from scraper.store.objects import WriteContext, encode_items


class _Spider(scrapy.Spider):
    name = "s"


def _mw(**settings: object) -> UnfollowedRedirectMiddleware:
    crawler = get_crawler(_Spider, settings_dict=settings)
    crawler.spider = _Spider()
    return UnfollowedRedirectMiddleware.from_crawler(crawler)


def _resp(status: int, location: str | None = None, **meta: object) -> tuple[Request, HtmlResponse]:
    req = Request("http://a.test/x", meta=meta)
    headers = {"Location": location} if location is not None else {}
    return req, HtmlResponse(req.url, status=status, headers=headers, body=b"", request=req)


def test_an_unfollowed_3xx_is_refused_unless_the_spider_handles_it() -> None:
    mw = _mw()
    with pytest.raises(BadRedirect):
        mw.process_response(*_resp(302))
    with pytest.raises(RedirectScheme) as exc:
        mw.process_response(*_resp(301, "file:///etc/passwd"))
    assert exc.value.reason == "policy:scheme" and "passwd" not in exc.value.detail
    # not followed for another reason (dont_redirect, redirects off, a status Scrapy does not follow, an http
    # Location the redirect middleware skipped): dropped as Scrapy's HttpErrorMiddleware drops it
    for mw_, (req, resp) in ((mw, _resp(302, "/ok", dont_redirect=True)), (_mw(REDIRECT_ENABLED=False), _resp(302, "/ok")),
                             (mw, _resp(300)), (mw, _resp(304)), (mw, _resp(302, "/ok"))):
        with pytest.raises(UnhandledRedirect) as unhandled:
            mw_.process_response(req, resp)
        assert unhandled.value.reason == f"http:{resp.status}"
    for req, resp in (_resp(302, handle_httpstatus_list=[302]), _resp(302, handle_httpstatus_all=True), _resp(200),
                      _resp(404)):
        assert mw.process_response(req, resp) is resp
    allowed = _mw(HTTPERROR_ALLOWED_CODES=[302])
    req, resp = _resp(302)
    assert allowed.process_response(req, resp) is resp


def test_the_middleware_runs_below_meta_refresh() -> None:
    from settings import DOWNLOADER_MIDDLEWARES as mws

    assert mws["middlewares.redirect.UnfollowedRedirectMiddleware"] < mws["middlewares.redirect.FleetMetaRefreshMiddleware"]


def test_redaction_is_exact_on_a_url_and_evidence_keeps_its_fields() -> None:
    for url in ("http://shop.example:8080/search?email=a@b.example", "https://web.archive.org/web/2020/https://x.test/@foo",
                "http://h.test/a:b@c", "http://[::1]:80/a@b"):
        assert redact_data({"url": url}) == {"url": url}
    assert redact_data({"url": "http://u:pw@h.test/"}) == {"url": "http://***@h.test/"}
    assert redact_data("https://ghp_token@github.test/x") == "https://***@github.test/x"
    assert redact_data("https://h.test/login?next=https://alice:s3cret@intranet.test/") == \
        "https://h.test/login?next=https://***@intranet.test/"
    evidence = {"cb_kwargs": {"token": "cursor-1"}, "url": url}
    assert redact_data(evidence, secret_fields=False) == evidence


def test_nan_keys_and_values_encode_and_the_rest_is_unchanged() -> None:
    ctx = WriteContext(spider="s", spider_version="1", run="r", fp="a" * 16, url="http://a.test/", worker_id="w",
                       attempt=1, attempts={}, proxy_id=None, fetched_at="t")
    line = json.loads(encode_items(ctx, [{math.nan: 1, "x": [math.inf], 1.5: "k"}]))
    assert line["NaN"] == 1 and line["x"] == [None] and line["1.5"] == "k"


def test_store_uris_are_checked_without_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # reading it would fail: nothing reads it here
    assert check_store_uri("s3://bucket/prefix") == "s3" and check_store_uri("file://./data") == "file"
    for bad in ("bogus://x", "s3://", "", "s3://b/p?q=1"):
        with pytest.raises(ValueError):
            check_store_uri(bad)
    # a file:// store is a local directory: credentials there were a directory name, printed in every summary
    with pytest.raises(ValueError) as exc:
        check_store_uri("file://user:FS3CR3T@host/x")
    assert "FS3CR3T" not in str(exc.value)


def test_ftp_may_carry_userinfo_http_may_not() -> None:
    assert refusal("ftp://user:pw@ftp.test/f", ("http", "https", "ftp")) is None
    problem = refusal("https://user:pw@a.test/")
    assert problem is not None and "credentials" in str(problem) and "pw" not in str(problem)


@pytest.mark.parametrize("given,level", [("fatal", "CRITICAL"), ("NOTSET", "DEBUG"), ("Warn", "WARNING")])
def test_logging_aliases_are_levels(given: str, level: str) -> None:
    assert FleetConfig.from_env({"FLEET_LOG_LEVEL": given}).log_level == level


def test_a_breaker_domain_is_found_as_recorded() -> None:
    known = {"xn--bcher-kva.de": {}, "shop.example": {}}
    assert _breaker_domain("Bücher.DE", known) == "xn--bcher-kva.de"
    assert _breaker_domain("shop.example.", known) == "shop.example"
    assert _breaker_domain("SHOP.example", known) == "shop.example"
    assert _breaker_domain("other.example", known) == "other.example"

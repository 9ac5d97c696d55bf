"""The scheme allow-list on the worker side (middlewares/schemes.py, settings), and the configuration
mistakes of issue #14 as one-line ConfigErrors that never repeat a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from scrapy import Request
from scrapy.settings import Settings
from scrapy.utils.misc import load_object

from middlewares.schemes import SchemeMiddleware
from scraper.infra.config import ConfigError, FleetConfig
from scraper.policy.taxonomy import D, classify_exception
from scraper.policy.urls import URLRefused
from scraper.worker.catalog import base_settings
from scraper.worker.proxies import ProxyConfigError, parse_proxies


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/hostname", "policy:scheme"), ("ftp://127.0.0.1/x", "policy:scheme"),
    ("s3://bucket/key", "policy:scheme"), ("data:text/plain,hi", "policy:scheme"), ("http:///x", "policy:bad_url"),
])
def test_middleware_refuses_as_class_d(url: str, reason: str) -> None:
    mw = SchemeMiddleware(FleetConfig().schemes)
    with pytest.raises(URLRefused) as ei:
        mw.process_request(Request(url))
    verdict = classify_exception(ei.value)
    assert (verdict.cls, verdict.reason) == (D, reason)
    assert mw.process_request(Request("https://shop.example/")) is None


def test_no_handler_is_class_d() -> None:
    """A scheme without a download handler (Scrapy's NotSupported) is permanent: D, never retried as A."""
    from scrapy.exceptions import NotSupported

    verdict = classify_exception(NotSupported("Unsupported URL scheme 'file': no handler available"))
    assert (verdict.cls, verdict.reason) == (D, "policy:scheme")


def test_middleware_reads_fleet_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    from scrapy.utils.test import get_crawler

    monkeypatch.setenv("FLEET_SCHEMES", "https,file")
    mw = SchemeMiddleware.from_crawler(get_crawler())
    assert mw.process_request(Request("file:///tmp/x")) is None
    with pytest.raises(URLRefused):
        mw.process_request(Request("http://shop.example/"))


def _handlers(settings: Settings) -> dict[str, object]:
    return {k: v for k, v in settings.getwithbase("DOWNLOAD_HANDLERS").items() if v is not None}


def test_download_handlers_off_unless_named() -> None:
    """Scrapy's file/ftp/s3/data handlers are off by default and on only for schemes FLEET_SCHEMES names."""
    settings = base_settings(FleetConfig())
    assert set(_handlers(settings)) == {"http", "https"}
    assert settings.getdict("DOWNLOADER_MIDDLEWARES")["middlewares.schemes.SchemeMiddleware"] == 40
    widened = base_settings(FleetConfig(schemes=("http", "https", "file")))
    handlers = _handlers(widened)
    assert set(handlers) == {"http", "https", "file"}
    assert load_object(str(handlers["file"])).__name__ == "FileDownloadHandler"


def test_fleet_schemes_config() -> None:
    assert FleetConfig.from_env({}).schemes == ("http", "https")
    assert FleetConfig.from_env({"FLEET_SCHEMES": "HTTPS, http"}).schemes == ("https", "http")
    for bad in ("gopher", "http,javascript", ","):
        with pytest.raises(ConfigError, match="FLEET_SCHEMES"):
            FleetConfig.from_env({"FLEET_SCHEMES": bad})


@pytest.mark.parametrize("url,words", [
    ("notaurl://x", "must start with redis://"),
    ("localhost:6379", "no scheme"),
    ("redis://u:hunter2@h:abc/0", "not a valid Redis URL"),
    ("redis://u:hunter2@[::1/0", "not a valid Redis URL"),
    ("redis://u:hunter2@h:99999/0", "not a valid Redis URL"),
])
def test_bad_redis_url_is_a_config_error_without_the_password(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as ei:
        FleetConfig.from_env({"FLEET_REDIS_URL": url})
    assert "hunter2" not in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://u:p@h", "unix:///tmp/r.sock?db=1", "REDIS://h"])
def test_good_redis_urls(url: str) -> None:
    assert FleetConfig.from_env({"FLEET_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("spec", ["http://u:hunter2@[::1:8080", "http://u:hunter2@h:99999", "http://u:hunter2@h:8a"])
def test_malformed_proxy_is_a_config_error_without_the_password(spec: str) -> None:
    with pytest.raises(ProxyConfigError) as ei:
        parse_proxies(spec)
    assert "hunter2" not in str(ei.value)


def test_proxy_file_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "proxies.txt"
    f.write_bytes(b"http://u:p\xff@h:8080\n")
    with pytest.raises(ProxyConfigError, match="not UTF-8"):
        parse_proxies(str(f))

"""The request envelope: lossless JSON round trip of every field Fleet uses, and hard rejection of
anything that is not a well-formed envelope of a known version (never pickle, never executed)."""

from __future__ import annotations

import base64
import json
import pickle
import re
from typing import Any

import pytest
from scrapy import Request, Spider

from scraper.queue.entrycheck import EnvelopeError
from scraper.queue.envelope import VERSION, Envelope, rule_domain
from scraper.queue.fingerprint import fp64


class _Spider(Spider):
    name = "envtest"

    def parse_item(self, response: Any, **kwargs: Any) -> Any:
        return None

    def on_error(self, failure: Any) -> Any:
        return None


def _request(**kwargs: Any) -> Request:
    spider = kwargs.pop("spider")
    defaults: dict[str, Any] = {
        "url": "https://shop.example/p/1?ref=a",
        "method": "POST",
        "headers": [
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("Content-Type", "application/octet-stream"),
        ],
        "body": bytes(range(256)) + b"\x00\xff\r\n",
        "meta": {"page": 3, "tags": ["a", "b"], "nested": {"k": [1, 2.5, None, True]}, "depth": 2},
        "cb_kwargs": {"category": "books", "ids": [1, 2, 3]},
        "priority": 7,
        "callback": spider.parse_item,
        "errback": spider.on_error,
        "dont_filter": True,
    }
    defaults.update(kwargs)
    return Request(**defaults)


# -- round trip -------------------------------------------------------------------------------


def test_round_trip_every_field() -> None:
    spider = _Spider()
    req = _request(spider=spider)
    env = Envelope.from_request(req, spider_name="envtest", run="r1", spider=spider)

    assert env.url == req.url
    assert env.method == "POST"
    assert env.headers["X-Multi"] == ["one", "two"]
    assert env.body == req.body
    assert env.meta == {"page": 3, "tags": ["a", "b"], "nested": {"k": [1, 2.5, None, True]}}
    assert "depth" not in env.meta  # carried by its own field
    assert env.depth == 2
    assert env.cb_kwargs == {"category": "books", "ids": [1, 2, 3]}
    assert env.priority == 7
    assert env.callback == "parse_item"
    assert env.errback == "on_error"
    assert env.dont_filter is True
    assert env.spider == "envtest" and env.run == "r1"

    # wire format: JSON text, body base64, and an exact round trip of the dataclass
    raw = env.dumps()
    data = json.loads(raw)
    assert data["v"] == VERSION
    assert base64.b64decode(data["body"]) == req.body
    env.attempts = {"A": 2, "B": 1}
    env.history = [{"cls": "A", "reason": "http:503"}]
    env.parent = "0123456789abcdef"
    back = Envelope.loads(env.dumps().encode("utf-8"))
    assert back == env
    assert Envelope.loads(env.dumps()) == env  # str input too

    # back to a Scrapy request bound to the spider's methods
    out = back.to_request(spider)
    assert out.url == req.url
    assert out.method == "POST"
    assert out.headers.getlist("X-Multi") == [b"one", b"two"]
    assert out.headers.get("Content-Type") == b"application/octet-stream"
    assert out.body == req.body
    assert out.cb_kwargs == req.cb_kwargs
    assert out.priority == 7
    assert out.callback == spider.parse_item
    assert out.errback == spider.on_error
    assert out.meta["depth"] == 2
    assert out.meta["page"] == 3 and out.meta["nested"] == {"k": [1, 2.5, None, True]}
    # Fleet's SEEN/DONE do the dedup; Scrapy's dupefilter must never drop a redelivery
    assert out.dont_filter is True
    # the fingerprint survives the trip (a redelivered request keeps its object key)
    assert fp64(out) == env.fp


def test_round_trip_defaults_and_dont_filter_false() -> None:
    req = Request("https://shop.example/")
    env = Envelope.from_request(req, spider_name="s", run="r")
    back = Envelope.loads(env.dumps())
    assert back == env
    assert back.method == "GET" and back.body == b"" and back.callback is None
    assert back.errback is None and back.dont_filter is False and back.depth == 0
    assert back.priority == 0 and back.meta == {} and back.cb_kwargs == {}
    out = back.to_request(None)
    assert out.url == "https://shop.example/" and out.body == b"" and out.callback is None


def test_enqueued_at_is_no_longer_written_but_an_old_entry_keeps_it() -> None:
    """Entries queued by a version before 2026-12-07 carry ``enqueued_at``; new ones do not (~33 bytes of
    every queued request that nothing reads). An old entry keeps its value through a retry's rewrite."""
    env = Envelope.for_url("https://shop.example/a", spider_name="s", run="r")
    assert "enqueued_at" not in json.loads(env.dumps())
    assert Envelope.loads(env.dumps()).enqueued_at == 0.0
    old = json.loads(env.dumps())
    old["enqueued_at"] = 1796600000.25
    back = Envelope.loads(json.dumps(old))
    assert back.enqueued_at == 1796600000.25
    assert json.loads(back.dumps())["enqueued_at"] == 1796600000.25
    assert "domain" not in json.loads(back.dumps())  # the URL gives it (rule_domain)


def test_domain_is_written_only_when_the_url_does_not_give_it() -> None:
    """An envelope names its domain only when the scripts' rule would not read it from the URL (issue #18:
    20-30 bytes of every queued request); when it does, it is the last key (LEASE reads it there)."""
    plain = Envelope.for_url("https://Shop.Example:8443/a", spider_name="s", run="r")
    assert "domain" not in json.loads(plain.dumps()) and plain.domain == "shop.example"
    assert rule_domain(plain.url) == plain.domain
    odd = Envelope.for_url("https://[2001:db8::1]:8443/a", spider_name="s", run="r")
    data = json.loads(odd.dumps())
    assert list(data)[-1] == "domain" and data["domain"] == "2001:db8::1"
    assert Envelope.loads(odd.dumps()).domain == "2001:db8::1"
    assert Envelope.loads(plain.dumps()).domain == "shop.example"


def test_callback_name_string_and_missing_on_spider() -> None:
    spider = _Spider()
    env = Envelope.from_request(
        Request("https://a.example/", callback=spider.parse_item),
        spider_name="s",
        run="r",
        spider=spider,
    )
    env.callback = "no_such_method"
    with pytest.raises(EnvelopeError, match="no_such_method"):
        env.to_request(spider)


def test_non_json_safe_meta_values_are_dropped() -> None:
    meta = {
        "keep": "yes",
        "num": 1,
        "obj": object(),
        "raw": b"bytes",
        "a_set": {1, 2},
        "nan": float("nan"),
        "download_slot": "shop.example",  # runtime keys are never persisted
        "proxy": "http://user:pw@proxy:8080",
        "_fleet": {"fp": "x"},
    }
    env = Envelope.from_request(Request("https://a.example/", meta=meta), spider_name="s", run="r")
    assert env.meta == {"keep": "yes", "num": 1}
    assert Envelope.loads(env.dumps()).meta == {"keep": "yes", "num": 1}


def test_non_json_cb_kwargs_rejected() -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_request(
            Request("https://a.example/", cb_kwargs={"o": object()}), spider_name="s", run="r"
        )


@pytest.mark.parametrize(
    "with_spider",
    [
        True,
        False,
    ],
    ids=["with_spider", "without_spider"],
)
def test_lambda_callback_raises(with_spider: bool) -> None:
    spider = _Spider() if with_spider else None
    req = Request("https://a.example/", callback=lambda r: None)
    with pytest.raises(EnvelopeError):
        Envelope.from_request(req, spider_name="s", run="r", spider=spider)


def test_lambda_errback_raises() -> None:
    spider = _Spider()
    req = Request("https://a.example/", callback=spider.parse_item, errback=lambda f: None)
    with pytest.raises(EnvelopeError):
        Envelope.from_request(req, spider_name="s", run="r", spider=spider)


def test_method_of_another_object_raises() -> None:
    spider = _Spider()

    class Other:
        def parse_item(self, response: Any) -> None:
            return None

    req = Request("https://a.example/", callback=Other().parse_item)
    with pytest.raises(EnvelopeError):
        Envelope.from_request(req, spider_name="s", run="r", spider=spider)


# -- rejection --------------------------------------------------------------------------------


def _valid() -> dict[str, Any]:
    return Envelope.from_request(Request("https://a.example/x"), spider_name="s", run="r").to_dict()


_EXECUTED: list[str] = []


def _boom() -> str:
    _EXECUTED.append("boom")
    return "boom"


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_boom, ())


@pytest.mark.parametrize("protocol", [2, 5])
def test_pickle_payload_rejected(protocol: int) -> None:
    with pytest.raises(EnvelopeError, match="pickle"):
        Envelope.loads(pickle.dumps(_valid(), protocol=protocol))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_never_executes(protocol: int) -> None:
    _EXECUTED.clear()
    with pytest.raises(EnvelopeError):
        Envelope.loads(pickle.dumps({"v": 1, "x": _Evil()}, protocol=protocol))
    assert _EXECUTED == []


@pytest.mark.parametrize(
    "raw", ["not json", "{", "", b"\xff\xfe\x00garbage", b"{'v': 1}"], ids=repr
)
def test_non_json_rejected(raw: str | bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.loads(raw)


@pytest.mark.parametrize("raw", ["[]", "[1, 2]", "1", '"text"', "null", "true"])
def test_non_object_json_rejected(raw: str) -> None:
    with pytest.raises(EnvelopeError, match="object"):
        Envelope.loads(raw)


@pytest.mark.parametrize("version", [2, 0, "1", None], ids=repr)
def test_unknown_version_rejected(version: Any) -> None:
    data = _valid()
    data["v"] = version
    with pytest.raises(EnvelopeError, match="version"):
        Envelope.loads(json.dumps(data))


def test_missing_version_rejected() -> None:
    data = _valid()
    del data["v"]
    with pytest.raises(EnvelopeError, match="version"):
        Envelope.loads(json.dumps(data))


@pytest.mark.parametrize("key", ["url", "fp", "spider", "run"])
def test_missing_required_field_rejected(key: str) -> None:
    data = _valid()
    del data[key]
    with pytest.raises(EnvelopeError):
        Envelope.loads(json.dumps(data))


@pytest.mark.parametrize("key", ["url", "fp"])
@pytest.mark.parametrize("value", ["", None, 5, ["x"]], ids=repr)
def test_empty_or_wrong_type_required_field_rejected(key: str, value: Any) -> None:
    data = _valid()
    data[key] = value
    with pytest.raises(EnvelopeError):
        Envelope.loads(json.dumps(data))


@pytest.mark.parametrize("body", ["!!!not-base64!!!", "abc", "AP8", 12, ["AP8="]], ids=repr)
def test_bad_base64_body_rejected(body: Any) -> None:
    data = _valid()
    data["body"] = body
    with pytest.raises(EnvelopeError):
        Envelope.loads(json.dumps(data))


@pytest.mark.parametrize(
    "key,value",
    [("attempts", [1]), ("attempts", {"A": "x"}), ("headers", ["a"]), ("priority", "high")],
)
def test_malformed_optional_fields_rejected(key: str, value: Any) -> None:
    data = _valid()
    data[key] = value
    with pytest.raises(EnvelopeError):
        Envelope.loads(json.dumps(data))


# -- fingerprint ------------------------------------------------------------------------------


def test_fp64_is_16_hex_and_stable() -> None:
    a1 = Request("https://shop.example/p/1?x=1&y=2")
    a2 = Request("https://shop.example/p/1?y=2&x=1")  # canonicalized query order
    b = Request("https://shop.example/p/2")
    post = Request("https://shop.example/p/1?x=1&y=2", method="POST", body=b"q=1")
    fp = fp64(a1)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fp64(a1) == fp  # same object, again
    assert fp64(Request("https://shop.example/p/1?x=1&y=2")) == fp  # a new, equal request
    assert fp64(a2) == fp
    assert fp64(b) != fp
    assert fp64(post) != fp
    env = Envelope.from_request(a1, spider_name="s", run="r")
    assert env.fp == fp
    assert Envelope.loads(env.dumps()).fp == fp


@pytest.mark.parametrize("url", [
    "http://example.com/a?b=2&a=1",
    "https://Example.COM:443/p%C3%A4th/ünïcode?q=ä#frag",
    "http://127.0.0.1:8000/product/1.html",
    "http://x.test/a b/c",
])
def test_for_url_matches_request_path(url: str) -> None:
    fast = Envelope.for_url(url, spider_name="s", run="r")
    slow = Envelope.from_request(Request(url), spider_name="s", run="r")
    assert (fast.url, fast.fp, fast.method, fast.callback, fast.dont_filter) == (
        slow.url, slow.fp, slow.method, slow.callback, slow.dont_filter)


def test_non_json_meta_and_cookies_are_not_queued_as_the_readme_says() -> None:
    """README "Differences from plain Scrapy": a meta value JSON cannot hold is left out (no error), and
    ``Request(cookies=...)`` is not carried; a ``Cookie`` header is. The worker's reuse of the callback's
    own Request object (ledger.reusable) does not apply to such a request, so every worker sees the same."""
    import datetime

    import scrapy

    from scraper.worker.ledger import reusable

    class Product(scrapy.Item):
        sku = scrapy.Field()

    req = Request("http://a.test/p", meta={"item": Product(sku="1"), "when": datetime.date(2026, 1, 1),
                                           "plain": {"sku": "1"}},
                  cookies={"session": "s1"}, headers={"Cookie": "token=t1"})
    env = Envelope.from_request(req, spider_name="s", run="r")
    assert env.meta == {"plain": {"sku": "1"}}
    back = Envelope.loads(env.dumps()).to_request(None)
    assert "item" not in back.meta and "when" not in back.meta and back.meta["plain"] == {"sku": "1"}
    assert not back.cookies and back.headers.getlist("Cookie") == [b"token=t1"]
    assert not reusable(req, env)

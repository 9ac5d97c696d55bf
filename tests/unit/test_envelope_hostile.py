"""Hostile queue entries: anything that cannot become the Request it describes is an EnvelopeError (the
worker sends it to the DLQ as ``bad_envelope``), and nothing else ever escapes decoding.

The property tests (hypothesis) feed ``Envelope.loads`` arbitrary bytes, arbitrary JSON, and valid
envelopes with one field replaced by arbitrary JSON; whatever decodes must then survive every later step
a worker takes with it (``to_request``, ``dumps`` for a retry, ``domain``, the object keys).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scrapy import Request, Spider

from scraper.queue.entrycheck import MAX_NESTING, EnvelopeError
from scraper.queue.envelope import Envelope
from scraper.store.backends import InvalidKeyError
from scraper.store.objects import evidence_key, items_key, raw_key


class _Spider(Spider):
    name = "s"
    not_callable = 5

    def parse_item(self, response: Any) -> Any:
        return None


def _valid(**changes: Any) -> dict[str, Any]:
    data = Envelope.for_url("https://a.example/x", spider_name="s", run="r1").to_dict()
    data.update(changes)
    return data


def _loads(**changes: Any) -> Envelope:
    return Envelope.loads(json.dumps(_valid(**changes)))


@pytest.mark.parametrize("changes,words", [
    ({"fp": "zzzzzzzzzzzzzzzz"}, "hex"),
    ({"fp": "0123456789ABCDEF"}, "hex"),  # upper case: Lua's buckets are lower-case hex
    ({"fp": "0123"}, "hex"),
    ({"run": "../../etc"}, "run id"),
    ({"run": "a/b"}, "run id"),
    ({"run": "r\n"}, "run id"),
    ({"spider": "x y"}, "spider name"),
    ({"url": "javascript:alert(1)"}, "url"),
    ({"url": "http:///nohost"}, "no host"),
    ({"url": "http://exa mple.com/"}, "url"),
    ({"url": "http://[::1/"}, "url"),
    ({"url": "http://a.test/\udcff"}, "Unicode"),
    ({"callback": "close"}, "callback"),  # scrapy.Spider's own attributes are never callbacks
    ({"callback": "from_crawler"}, "callback"),
    ({"callback": "__init__"}, "callback"),  # dunder names never (single-underscore ones: CrawlSpider's)
    ({"callback": "_set_crawler"}, "callback"),
    ({"callback": "a.b"}, "callback"),
    ({"callback": 5}, "callback"),
    ({"errback": ["x"]}, "errback"),
    ({"method": "GET\r\nX: 1"}, "method"),
    ({"headers": {"X": ["a\r\nInjected: 1"]}}, "header"),
    ({"headers": {"Bad Name": ["a"]}}, "header"),
    ({"headers": {"X": "abc"}}, "header"),
    ({"priority": 1e300}, "priority"),
    ({"priority": True}, "priority"),
    ({"depth": -1}, "depth"),
    ({"attempts": {"A": -1}}, "attempts"),
    ({"attempts": {"A": 1.5}}, "attempts"),
    ({"history": ["x"]}, "history"),
    ({"history": [{"proxy": ["p"]}]}, "history"),
    ({"meta": [["a", 1]]}, "meta"),
    ({"parent": 5}, "parent"),
    ({"enqueued_at": "now"}, "enqueued_at"),
    ({"body": 5}, "body"),
])
def test_malformed_fields_are_envelope_errors(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(EnvelopeError, match=words):
        _loads(**changes)


@pytest.mark.parametrize("text", [
    '{"v": 1, "url": "https://a.example/", "spider": "s", "run": "r", "fp": "0123456789abcdef", "priority": NaN}',
    '{"v": 1, "url": "https://a.example/", "spider": "s", "run": "r", "fp": "0123456789abcdef", "x": Infinity}',
    '{"v": 1, "url": "https://a.example/", "spider": "s", "run": "r", "fp": "0123456789abcdef", "enqueued_at": 1e400}',
    '{"v": 1, "url": "https://a.example/", "spider": "s", "run": "r", "fp": "0123456789abcdef", "depth": '
    + "9" * 5000 + "}",
    "[" * 100_000 + "]" * 100_000,
])
def test_numbers_json_cannot_write_back_are_refused(text: str) -> None:
    """NaN and out-of-range floats decode in Python but fail json.dumps(allow_nan=False) when the entry is
    written back (a retry, the DLQ): refused at decode, as are integers of thousands of digits and
    nesting that would exhaust the stack."""
    with pytest.raises(EnvelopeError):
        Envelope.loads(text)


def test_deep_meta_is_refused() -> None:
    deep: Any = 1
    for _ in range(MAX_NESTING + 1):
        deep = [deep]
    with pytest.raises(EnvelopeError, match="nest"):
        _loads(meta={"x": deep})
    shallow: Any = 1
    for _ in range(MAX_NESTING - 2):
        shallow = {"k": shallow}
    assert _loads(meta={"x": shallow}).meta == {"x": shallow}


def test_bad_envelope_keeps_a_usable_run() -> None:
    """The DLQ record of a bad entry names its run when the run id is usable, so `fleet run` counts it."""
    with pytest.raises(EnvelopeError) as ei:
        _loads(fp="not-hex-at-all!!")
    assert ei.value.run == "r1"
    with pytest.raises(EnvelopeError) as ei:
        _loads(run="../x")
    assert ei.value.run == ""


def test_to_request_failures_are_envelope_errors() -> None:
    spider = _Spider()
    env = _loads(callback="parse_item")
    assert env.to_request(spider).callback == spider.parse_item
    for name in ("nosuch", "not_callable"):
        env.callback = name
        with pytest.raises(EnvelopeError):
            env.to_request(spider)
    env.callback = None
    env.url = "javascript:alert(1)"  # an envelope built in memory, never decoded
    with pytest.raises(EnvelopeError, match="Missing scheme"):
        env.to_request(spider)


def test_object_keys_check_names_again() -> None:
    fp = "0123456789abcdef"
    assert items_key("s", "r1", fp) == f"items/spider=s/run=r1/01/{fp}.jsonl"
    for spider, run, key_fp in (("s", "../x", fp), ("a/b", "r", fp), ("s", "r", "../../etc/passwd")):
        for build in (items_key, raw_key):
            with pytest.raises(InvalidKeyError):  # the store's error: only this request's object fails
                build(spider, run, key_fp)
        with pytest.raises(InvalidKeyError):
            evidence_key(spider, run, "D", key_fp)
    with pytest.raises(ValueError):
        evidence_key("s", "r", "../x", fp)


# -- properties -------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_FIELDS = ["v", "url", "spider", "run", "fp", "method", "headers", "body", "meta", "cb_kwargs", "priority",
           "callback", "errback", "dont_filter", "depth", "attempts", "history", "enqueued_at", "parent", "domain"]


def _survives(env: Envelope) -> None:
    """What a worker does with a decoded entry: none of it may raise anything but EnvelopeError."""
    assert isinstance(env.domain, str)
    items_key(env.spider, env.run, env.fp)
    for text in (env.url, env.spider, env.run, env.fp):  # the DLQ record's fields: Redis takes UTF-8
        text.encode("utf-8")
    again = Envelope.loads(env.dumps())  # written back on a retry, read by the next delivery
    assert again == env
    try:
        request = env.to_request(_Spider())
    except EnvelopeError:
        return
    assert request.url


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_loads_of_any_bytes_raises_only_envelope_error(raw: bytes | str) -> None:
    try:
        env = Envelope.loads(raw)
    except EnvelopeError:
        return
    _survives(env)


@settings(max_examples=300, deadline=None)
@given(value=_JSON)
def test_loads_of_any_json_raises_only_envelope_error(value: Any) -> None:
    try:
        env = Envelope.loads(json.dumps(value))
    except EnvelopeError:
        return
    _survives(env)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(_FIELDS), value=_JSON, drop=st.booleans())
def test_one_hostile_field_raises_only_envelope_error(key: str, value: Any, drop: bool) -> None:
    """A valid envelope (with a callback, headers and a body) with one field replaced or removed."""
    data = Envelope.from_request(
        Request("https://a.example/x?q=1", method="POST", body=b"\x00\xff", headers={"X-A": "1"},
                callback=_Spider().parse_item, meta={"m": [1]}, cb_kwargs={"k": "v"}, priority=3),
        spider_name="s", run="r1", spider=_Spider()).to_dict()
    if drop:
        data.pop(key, None)
    else:
        data[key] = value
    try:
        env = Envelope.loads(json.dumps(data))
    except EnvelopeError:
        return
    _survives(env)


def test_an_entry_never_chooses_its_proxy_slot_or_fleet_bookkeeping() -> None:
    """A queue entry is input: meta that would pick a proxy host (bypassing the private-address guard),
    a download slot, or mark the fetch void (every outcome dropped unsettled) is dropped at decode."""
    env = _loads(meta={"proxy": "http://10.0.0.5:3128", "download_slot": "x", "_fleet_void": True,
                       "_fleet_delivery": 7, "_fleet": "lease", "_auth_proxy": "x", "keep": 1})
    assert env.meta == {"keep": 1}
    req = env.to_request(None)
    assert "proxy" not in req.meta and "_fleet_void" not in req.meta and req.meta["keep"] == 1


@pytest.mark.parametrize("name", ["_callback", "_errback", "_parse_sitemap", "_parse_item"])
def test_single_underscore_callbacks_are_callbacks(name: str) -> None:
    """CrawlSpider's rules and SitemapSpider queue their requests with private callbacks (issue #19)."""
    env = _loads(callback=name, errback=name)
    assert (env.callback, env.errback) == (name, name)


@pytest.mark.parametrize("name", ["_MySpider__purge", "__init__", "__class__"])
def test_mangled_and_dunder_names_are_never_callbacks(name: str) -> None:
    with pytest.raises(EnvelopeError, match="not the name of a spider callback"):
        _loads(callback=name)


def test_a_callable_attribute_of_the_spider_is_not_a_callback() -> None:
    """An entry names its callback; only a method of the spider may answer to that name, never a callable
    object the spider holds (a client, a helper) that would be called with the response."""
    import scrapy

    class Held:
        def __call__(self, response: object) -> None:
            raise AssertionError("called")

    class S(scrapy.Spider):
        name = "s"
        _client = Held()

        def _parse_item(self, response: object) -> None:
            pass

    spider = S()
    assert _loads(callback="_parse_item").to_request(spider).callback == spider._parse_item
    with pytest.raises(EnvelopeError, match="is not a callback"):
        _loads(callback="_client").to_request(spider)

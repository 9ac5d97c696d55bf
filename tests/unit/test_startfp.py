"""Start-request fingerprints (scraper.queue.startfp): Scrapy's dont_filter semantics, idempotent seeding."""

from __future__ import annotations

from scrapy import Request, Spider

from scraper.queue.envelope import Envelope, fp64
from scraper.queue.names import is_fp
from scraper.queue.startfp import mark_start, start_fp


class _S(Spider):
    name = "s"

    def parse_page(self, response: object) -> None: ...


def _env(req: Request) -> Envelope:
    return Envelope.from_request(req, spider_name="s", run="r1", spider=_S())


def test_dont_filter_start_request_leaves_the_plain_fingerprint_free() -> None:
    req = Request("http://a.test/docs/", dont_filter=True)
    env = mark_start(_env(req))
    assert is_fp(env.fp) and env.fp != fp64(req)  # a discovered request for the URL is not SEEN


def test_start_request_without_dont_filter_keeps_its_fingerprint() -> None:
    req = Request("http://a.test/docs/")
    assert mark_start(_env(req)).fp == fp64(req)  # recorded like Scrapy's dupefilter records it


def test_same_start_request_twice_is_one_fingerprint() -> None:
    a = mark_start(_env(Request("http://a.test/x", dont_filter=True, meta={"k": [1, 2]}, cb_kwargs={"n": 1})))
    b = mark_start(_env(Request("http://a.test/x", dont_filter=True, meta={"k": [1, 2]}, cb_kwargs={"n": 1})))
    assert a.fp == b.fp  # re-seeding a run stays idempotent


def test_what_tells_start_requests_apart() -> None:
    spider = _S()
    base = _env(Request("http://a.test/x", dont_filter=True))
    others = [
        Envelope.from_request(Request("http://a.test/x", dont_filter=True, callback=spider.parse_page),
                              spider_name="s", run="r1", spider=spider),
        _env(Request("http://a.test/x", dont_filter=True, meta={"cookiejar": 2})),
        _env(Request("http://a.test/x", dont_filter=True, cb_kwargs={"page": 2})),
        _env(Request("http://a.test/x", dont_filter=True, method="POST", body=b"a=1")),
    ]
    fps = {start_fp(base), *(start_fp(e) for e in others)}
    assert len(fps) == 1 + len(others)


def test_meta_with_int_and_str_keys_has_a_start_fingerprint() -> None:
    """The envelope accepts such meta (JSON makes every key text); hashing it must not raise."""
    env = _env(Request("http://a.test/x", dont_filter=True, meta={"m": {1: "a", "b": 2}}))
    assert is_fp(start_fp(env))

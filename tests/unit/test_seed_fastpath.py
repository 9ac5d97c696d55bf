"""The seeding fast path (``url_fingerprint``, ``SeedEncoder``) against the exact path it replaces.

Why: ``fleet seed`` hashes canonical-looking URLs directly and splices envelopes into a template. That
is only acceptable if the request URL, the 64-bit fingerprint (SEEN/DONE dedup) and the envelope are
exactly what Scrapy's ``Request(url)`` + ``fp64`` and ``Envelope.for_url(...).dumps()`` give, for
every URL, including the ones the fast path must refuse.
"""

from __future__ import annotations

import json
import random
import re
import string
from urllib.parse import urlsplit

import pytest
from scrapy import Request
from scrapy.utils.request import fingerprint as scrapy_fingerprint

from scraper.policy.urls import FETCHABLE_SCHEMES, refusal
from scraper.queue import fingerprint
from scraper.queue.entrycheck import EnvelopeError
from scraper.queue.envelope import Envelope, SeedEncoder
from scraper.queue.fingerprint import exact_fingerprint, fast_form, fp64, new_ids, url_fingerprint
from scraper.queue.names import is_name

_HOSTS = [
    "example.com", "shop.example.com", "Shop.Example.COM", "EXAMPLE.org", "127.0.0.1", "10.0.0.255",
    "a-b.c-d.test", "xn--bcher-kva.de", "www.bücher.de", "BÜCHER.de", "例え.jp", "localhost",
    "[::1]", "[2001:DB8::0:1]", "[::ffff:1.2.3.4]", "example.com.", ".example.com", "a..b", "-a-.test",
    "x" * 64 + ".test", "user@example.com", "user:pw@Example.com", "ex%41mple.com", "exa\tmple.com",
    "ex ample.com", "ＥＸＡＭＰＬＥ.com", "ex_ample.com", "1.2.3", "0x7f.1",
]
_PORTS = ["", ":80", ":443", ":8080", ":0080", ":", ":0", ":65535", ":65536", ":99999", ":8a"]
_SCHEMES = ["http", "https", "HTTP", "Https", "ftp", "ws", "file"]
_PATH_ATOMS = [
    "item", "a.html", "A-Z_~", "x.y.z", ".", "..", ".hidden", "%2e", "%2E%2e", "", "a%20b", "a b",
    "%7e", "%7E", "%41", "%zz", "%", "caf\u00e9", "\u4f8b", "a;b", "a;p=1", "p|q", "[x]", "a'b",
    "!$&'()*+,=:@", "a+b", "a%2Fb", "a%2fb", "a%3Bb", "q?", "f#", "\\", "%25", "\x7f", "a\"b", "a<b>",
    "`^{}", "12345",
]
_QUERY_ATOMS = ["a", "b", "B", "a1", "z", "_", "-", ".", "~", "x+y", "x y", "x%20y", "%41", "é", "ü%C3",
                "a=b", "", "+", "1", "10", "2", "k.v", "'", "q%2B", "semi;colon"]


_SAFE_PATH_ATOMS = ["item", "a.html", "A-Z_~", "x.y.z", "", "!$&'()*+,=:@", "a+b", "12345", "p-1_2~3"]
_SAFE_QUERY_ATOMS = ["a", "b", "B", "a1", "z", "_", "-", ".", "~", "x+y", "+", "1", "10", "2", "k.v"]


def _random_url(rnd: random.Random) -> str:
    """A URL from a mix of shapes: many plausible seeds, with every kind of irregularity sprinkled in."""
    clean = rnd.random() < 0.5  # parts the fast path may accept, so both paths get exercised
    scheme = rnd.choice(_SCHEMES) if rnd.random() < 0.3 else rnd.choice(["http", "https"])
    host = rnd.choice(_HOSTS) if rnd.random() < 0.5 else rnd.choice(_HOSTS[:6])
    port = rnd.choice(_PORTS) if rnd.random() < 0.4 else ""
    if not clean and rnd.random() < 0.3:
        path = "/" + "".join(rnd.choice(string.printable[:94] + " é") for _ in range(rnd.randint(0, 12)))
    else:
        atoms = _SAFE_PATH_ATOMS if clean else _PATH_ATOMS
        path = "".join("/" + rnd.choice(atoms) for _ in range(rnd.randint(0 if not clean else 1, 4)))
    url = f"{scheme}://{host}{port}{path}"
    r = rnd.random()
    if r < 0.45:
        atoms = _SAFE_QUERY_ATOMS if clean else _QUERY_ATOMS
        pairs = []
        for _ in range(rnd.randint(1, 4)):
            k, v = rnd.choice(atoms), rnd.choice(atoms)
            pairs.append(k if rnd.random() < 0.05 else f"{k}={v}")
        if clean or rnd.random() < 0.5:
            pairs.sort()
        url += "?" + "&".join(pairs)
    elif r < 0.5 and not clean:
        url += "?"
    if not clean and rnd.random() < 0.2:
        url += "#" + rnd.choice(["", "frag", "a b", "x?y"])
    return url


def _scrapy(url: str) -> tuple[str, str] | type[BaseException]:
    """What Scrapy makes of ``url``: (request.url, fp64), or the exception class it raises."""
    try:
        req = Request(url)
    except ValueError:
        return ValueError
    if "://" not in req.url:  # about:/data: URLs that Scrapy accepts but Fleet refuses
        return ValueError
    return req.url, scrapy_fingerprint(req)[:8].hex()  # Scrapy's own, not fp64 (which has a fast path)


def _ours(url: str) -> tuple[str, str] | type[BaseException]:
    try:
        return url_fingerprint(url)
    except ValueError:  # EnvelopeError is a ValueError
        return ValueError


_CASES = [
    "http://127.0.0.1:8080/item/1.html",
    "https://example.com/",
    "https://example.com",
    "http://example.com/a/b/c?x=1&y=2",
    "http://example.com/a?y=2&x=1",
    "http://example.com/a?x=2&x=1",
    "http://example.com/a?x=1&x=1",
    "http://example.com/a?a=1&ab=0",
    "http://example.com/a?ab=0&a=1",
    "http://example.com/a?a+b=1&a-b=2",
    "http://example.com/a?a-b=1&a+b=2",
    "http://example.com/a?q=x+y",
    "http://example.com/a?q=",
    "http://example.com/a?q",
    "http://example.com/a?",
    "http://example.com/a?&q=1",
    "http://example.com/a?q=1&",
    "http://example.com/a?q=1=2",
    "http://example.com/a#frag",
    "http://example.com/a/./b",
    "http://example.com/a/../b",
    "http://example.com/.well-known/x",
    "http://example.com//a//b",
    "http://example.com/a;p",
    "http://example.com/a;p/b",
    "http://example.com/%7Euser",
    "http://example.com/~user",
    "http://example.com/a b",
    "http://example.com/caf\u00e9",
    "HTTP://EXAMPLE.COM/A",
    "http://Example.com:80/x",
    "http://example.com:0080/x",
    "http://example.com:/x",
    "http://example.com:99999/x",
    "http://www.bücher.de/x",
    "http://ＥＸＡＭＰＬＥ.com/x",
    "http://[::1]/x",
    "http://[2001:DB8::0:1]:8080/x",
    "http://user:pw@example.com/x",
    "http://example.com./x",
    "http://" + "x" * 64 + ".test/x",
    "http://exa\tmple.com/x",
    "http://example.com\\evil.com/x",
    "  http://example.com/x  ",
    "www.example.com/x",
    "mailto:a@example.com",
    "ftp://example.com/x",
    "http:///x",
    "http://[::1/x",
]


@pytest.mark.parametrize("url", _CASES)
def test_fast_path_matches_scrapy_on_known_cases(url: str) -> None:
    assert _ours(url) == _scrapy(url)


def test_fast_path_matches_scrapy_on_a_random_corpus() -> None:
    rnd = random.Random(20240611)
    fast = 0
    for _ in range(6000):
        url = _random_url(rnd)
        fast += fast_form(url) is not None
        assert _ours(url) == _scrapy(url), url
    assert fast > 1000  # the corpus exercises the fast path, not only the exact one


def test_fp64_of_discovered_requests_is_scrapys_fingerprint() -> None:
    """fp64 (every request a callback yields) takes the fast path for body-less GETs only."""
    rnd = random.Random(99)
    for _ in range(3000):
        url = _random_url(rnd)
        try:
            req = Request(url)
        except ValueError:
            continue
        assert fp64(req) == scrapy_fingerprint(req)[:8].hex(), url
    for req in (Request("http://example.com/a", method="POST"), Request("http://example.com/a", body=b"x"),
                Request("http://example.com/a", method="HEAD"),
                Request("http://example.com/a", headers={"X": "1"}, meta={"m": 1}, cb_kwargs={"k": 2})):
        assert fp64(req) == scrapy_fingerprint(req)[:8].hex()


def test_fast_path_matches_scrapy_on_plausible_seed_urls() -> None:
    rnd = random.Random(7)
    chars = string.ascii_letters + string.digits + "-._~!$&'()*+,=:@/"
    for i in range(3000):
        host = rnd.choice(_HOSTS[:6]) + rnd.choice(["", ":8080", ":443"])
        path = "/" + "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 30)))
        query = "&".join(sorted(f"{rnd.choice('abcXYZ_-.~+')}{j}={rnd.randint(0, 99)}"
                                for j in range(rnd.randint(0, 3))))
        url = f"{rnd.choice(['http', 'https'])}://{host}{path}" + (f"?{query}" if query else "")
        assert _ours(url) == _scrapy(url), (i, url)


def test_fast_path_is_taken_for_the_bench_shape() -> None:
    url = "http://127.0.0.1:8080/item/123.html"
    assert fast_form(url) == (url, "127.0.0.1")
    assert url_fingerprint(url) == exact_fingerprint(url)


@pytest.mark.parametrize("url", [
    "http://example.com/a?b=1&a=2",  # unsorted query
    "http://example.com/a#f",  # fragment
    "http://example.com/a/../b",  # dot segments
    "http://example.com/%41",  # percent-encoding
    "http://example.com/é",  # non-ASCII path
    "http://user@example.com/a",  # userinfo
    "http://[::1]/a",  # IPv6
    "http://example.com/a;p",  # params
])
def test_fast_path_refuses_what_it_cannot_prove(url: str) -> None:
    assert fast_form(url) is None


# -- envelopes --------------------------------------------------------------------------------


@pytest.mark.parametrize("callback", [None, "parse_item"])
@pytest.mark.parametrize("spider,run", [("demo_shop", "bench"), ("s.p-1", 'r"un\\ ü'), ("s", "\x00u")])
def test_seed_encoder_writes_what_for_url_dumps(spider: str, run: str, callback: str | None) -> None:
    enc = SeedEncoder(spider_name=spider, run=run, callback=callback)
    rnd = random.Random(3)
    urls = [*(_c for _c in _CASES if _ours(_c) is not ValueError), *(_random_url(rnd) for _ in range(300))]
    for url in urls:
        try:
            ref = Envelope.for_url(url, spider_name=spider, run=run)
        except ValueError:
            with pytest.raises(ValueError):
                enc.entry(url)
            continue
        ref.callback = callback
        raw, fp = enc.entry(url)
        assert json.loads(raw)["fp"] == fp == ref.fp
        assert "enqueued_at" not in json.loads(raw)  # no longer written (Envelope.enqueued_at)
        # for_url and the template both take the domain from the fast path: it must be urlsplit's
        assert ref.domain == (urlsplit(ref.url).hostname or "").lower(), url
        assert raw == ref.dumps(), url  # byte for byte
        assert re.fullmatch(r"[0-9a-f]{16}", fp)
        if refusal(ref.url, FETCHABLE_SCHEMES) is not None or not is_name(run):
            # no host, a scheme nothing fetches, a run id no key may hold: a worker refuses the entry
            # (`fleet seed` checks URLs and run ids before they get this far)
            with pytest.raises(EnvelopeError):
                Envelope.loads(raw)
            continue
        back = Envelope.loads(raw)
        assert back == ref
        assert back.domain == ref.domain


def test_seed_encoder_envelope_is_a_plain_seed() -> None:
    raw, fp = SeedEncoder(spider_name="demo_shop", run="r1").entry("http://127.0.0.1:8080/item/1.html")
    data = json.loads(raw)
    assert data["v"] == 1 and data["url"] == "http://127.0.0.1:8080/item/1.html"
    assert "domain" not in data and data["fp"] == fp  # the URL gives it (rule_domain)
    env = Envelope.loads(raw.encode())
    assert (env.method, env.headers, env.body, env.meta, env.cb_kwargs, env.priority, env.callback,
            env.errback, env.dont_filter, env.depth, env.attempts, env.history, env.parent) == (
        "GET", {}, b"", {}, {}, 0, None, None, False, 0, {}, [], None)
    assert env.to_request(None).url == env.url


def test_seed_encoder_raises_like_for_url() -> None:
    enc = SeedEncoder(spider_name="s", run="r")
    with pytest.raises(EnvelopeError):
        enc.entry("mailto:someone@example.com")
    with pytest.raises(ValueError, match="Port"):
        enc.entry("http://example.com:99999/x")


def test_new_ids_are_random_hex() -> None:
    ids = new_ids(1000)
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_premise_holds_on_the_installed_w3lib() -> None:
    # if this fails, a w3lib upgrade normalises a character the fast path accepts: seeding stays
    # correct (everything takes the exact path) but loses its speed until _CANONICAL_URL is narrowed
    assert fingerprint._premise_holds() and fingerprint._FAST_OK


def test_without_the_premise_every_url_takes_the_exact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:8080/item/1.html"
    expected = url_fingerprint(url)
    monkeypatch.setattr(fingerprint, "_FAST_OK", False)
    assert fast_form(url) is None
    assert url_fingerprint(url) == expected
    raw, fp = SeedEncoder(spider_name="s", run="r").entry(url)
    assert fp == expected[1] and Envelope.loads(raw).url == url

"""Which URLs Fleet fetches (scraper/policy/urls.py): the scheme allow-list, malformed URLs, seed-file lines.

Property tests (hypothesis) check that no input makes the checks raise, and that every URL they accept
is one a worker can turn into a Scrapy Request: the seed side and the worker side agree.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scrapy import Request

from scraper.policy.urls import (
    BAD_URL,
    DEFAULT_SCHEMES,
    FETCHABLE_SCHEMES,
    MAX_URL_LENGTH,
    POLICY_SCHEME,
    URLRefused,
    check_url,
    parse_schemes,
    refusal,
    url_lines,
)
from scraper.queue.envelope import Envelope


@pytest.mark.parametrize("url", [
    "http://example.com/", "https://shop.example/p/1?ref=a#x", "HTTP://EXAMPLE.COM", "http://127.0.0.1:8080/a",
    "http://[::1]:8080/", "http://www.bücher.de/", "http://a_b.test/a b",
    "http://host.test:0/", "http://host.test:/x",
])
def test_accepted(url: str) -> None:
    assert refusal(url) is None
    assert check_url(url) == url
    Request(url)  # and Scrapy takes it


@pytest.mark.parametrize("url", [
    "file:///etc/hostname", "FILE:///etc/passwd", "ftp://127.0.0.1/x", "s3://bucket/key", "data:text/plain,hi",
    "javascript:alert(1)", "about:blank", "mailto:a@b.test", "gopher://x/",
])
def test_other_schemes_are_policy(url: str) -> None:
    problem = refusal(url)
    assert problem is not None and problem.reason == POLICY_SCHEME
    assert "FLEET_SCHEMES" in str(problem)
    with pytest.raises(URLRefused):
        check_url(url)


@pytest.mark.parametrize("url,words", [
    ("http:///nohost", "no host"), ("http://exa mple.com/", "space"), ("http://user:pw@host.test/", "credentials"),
    ("http://user@host.test/", "credentials"), ("http://[::1/", "malformed"),
    ("http://a.test:99999/", "port"), ("http://a.test:8a/", "port"), ("not a url", "absolute URL"),
    ("//example.com/x", "absolute URL"), ("http:example.com", "absolute URL"), ("", "absolute URL"),
    ("http://" + "a" * MAX_URL_LENGTH, "longer"), ("http://[fe80::zz]/", "malformed"),
    ("http://a<b>.test/", "character"), ("http://xn--a" + "a" * 70 + ".test/", ""),
    ("http://a.test/\udcff", "Unicode"), ("http://ex%41mple.test/", "character"),
])
def test_malformed_urls(url: str, words: str) -> None:
    problem = refusal(url)
    if words == "":  # ASCII label over 63 characters: DNS would refuse it, we let Twisted say so
        assert problem is None
        return
    assert problem is not None and problem.reason == BAD_URL, url
    assert words in str(problem)


def test_schemes_widen() -> None:
    assert refusal("file:///etc/hostname", ("http", "https", "file")) is None
    assert refusal("data:text/plain,hi", ("data",)) is None
    assert refusal("ftp:///x", ("ftp",)) is not None  # ftp needs a host; file and data do not
    assert refusal("http://a.test/", ("https",)) is not None


def test_parse_schemes() -> None:
    assert parse_schemes("http,https") == DEFAULT_SCHEMES
    assert parse_schemes(" HTTPS , file:// ,https") == ("https", "file")
    for bad in ("gopher", "http,javascript", "", " , ", "ht tp"):
        with pytest.raises(ValueError):
            parse_schemes(bad)


def test_url_lines() -> None:
    data = (b"\xef\xbb\xbfhttp://a.test/1\r\n# comment\n\n  http://a.test/2  \n"
            b"http://a.test/\xff\xfe\n" + b"x" * (MAX_URL_LENGTH * 3) + b"\nhttp://a.test/3")
    out = list(url_lines(io.BytesIO(data)))
    assert out[:2] == ["http://a.test/1", "http://a.test/2"]
    assert isinstance(out[2], URLRefused) and "line 5: not UTF-8" in str(out[2])
    assert isinstance(out[3], URLRefused) and "line 6: longer than" in str(out[3])
    assert out[4:] == ["http://a.test/3"]


def test_url_lines_reads_a_line_without_end_in_bounded_pieces() -> None:
    class Counting(io.BytesIO):
        biggest = 0

        def read(self, size: int | None = -1) -> bytes:
            assert size is not None and 0 < size <= 65536  # never the whole file
            data = super().read(size)
            Counting.biggest = max(Counting.biggest, len(data))
            return data

    out = list(url_lines(Counting(b"y" * 5_000_000)))
    assert len(out) == 1 and isinstance(out[0], URLRefused)
    assert 0 < Counting.biggest <= 65536


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_url_lines_ends_a_line_at_lf_crlf_or_a_lone_cr(end: bytes) -> None:
    urls = [f"http://a.test/{i}" for i in range(20_000)]  # over several reads, an end split between two
    data = end.join(u.encode() for u in urls) + end + b"\n# c" + end
    assert list(url_lines(io.BytesIO(data))) == urls
    glued = list(url_lines(io.BytesIO(b"http://a.test/1\rhttp://a.test/2\r")))  # the hostile probe's file
    assert glued == ["http://a.test/1", "http://a.test/2"]


# -- properties -------------------------------------------------------------------------------

_URLISH = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s, a, r: f"{s}://{a}{r}",
              st.sampled_from(["http", "https", "HTTP", "file", "ftp", "javascript", "data", "x-y"]),
              st.text(max_size=25), st.text(max_size=25)),
    st.builds(lambda a, p, r: f"http://{a}{p}/{r}",
              st.from_regex(r"[a-z0-9.\-\[\]:@%_ ]{0,20}", fullmatch=True),
              st.sampled_from(["", ":", ":80", ":65536", ":x", ":-1"]), st.text(max_size=10)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=_URLISH, schemes=st.sampled_from([DEFAULT_SCHEMES, FETCHABLE_SCHEMES]))
def test_refusal_never_raises_and_accepted_urls_become_requests(url: str, schemes: tuple[str, ...]) -> None:
    """Any text: a verdict, never an exception. Any URL accepted: Scrapy builds its Request, and the
    envelope of that request has a domain (a parsed host) and decodes again as the same envelope."""
    problem = refusal(url, schemes)
    if problem is not None:
        assert problem.reason in (POLICY_SCHEME, BAD_URL) and str(problem)
        return
    request = Request(url)
    env = Envelope.from_request(request, spider_name="s", run="r")
    assert isinstance(env.domain, str)
    assert Envelope.loads(env.dumps()) == env


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_url_lines_never_raise(data: bytes) -> None:
    for x in url_lines(io.BytesIO(data)):
        assert isinstance(x, (str, URLRefused))
        if isinstance(x, str):
            assert x and x == x.strip() and not x.startswith("#")

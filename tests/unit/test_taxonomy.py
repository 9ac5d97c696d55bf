"""FailureClass and Verdict: typed facts where strings were parsed before, with the letters unchanged.

Why: the runtime used to read the HTTP status back out of ``verdict.reason`` (``"http:429"``) to decide
whether a domain slows down and whether a proxy is burned. The status is a field now, set exactly where the
reason is ``http:<status>``; and the class is an enum whose members are still the letters everywhere the
letters were used (envelope budgets, JSON, logs, stats keys).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from scrapy.crawler import Crawler
from scrapy.http import HtmlResponse
from twisted.internet import error as txerror

from scraper.policy.refused import BodyTooLarge
from scraper.policy.taxonomy import OK, A, B, C, D, FailureClass, Verdict, classify_exception, classify_response
from scraper.worker.ports import attach, fleet_of

URL = "https://shop.example/p/1"


def _resp(status: int, body: bytes = b"<html><body>ok</body></html>", **headers: str) -> HtmlResponse:
    return HtmlResponse(url=URL, status=status, body=body, headers=headers, encoding="utf-8")


def test_members_are_their_letters() -> None:
    assert [A, B, C, D, OK] == ["A", "B", "C", "D", "ok"]
    assert all(isinstance(m, str) for m in FailureClass)
    assert FailureClass("B") is B
    assert f"fleet/class/{D}" == "fleet/class/D"
    assert f"exhausted:{A}" == "exhausted:A"
    assert str(C) == "C" and f"{B:>2}" == " B"
    assert json.dumps({A: B, "cls": D}) == '{"A": "B", "cls": "D"}'


def test_budgets_keyed_by_member_or_letter_are_one_budget() -> None:
    attempts = json.loads('{"A": 2}')  # as an envelope decodes them
    attempts[A] = attempts.get(A, 0) + 1
    assert attempts == {"A": 3} and len(attempts) == 1
    assert json.dumps(attempts) == '{"A": 3}'


@pytest.mark.parametrize(
    ("status", "cls"),
    [(200, OK), (301, OK), (403, B), (407, B), (429, B), (503, A), (500, A), (599, A), (404, D), (418, D),
     (0, A), (-5, A), (99, A), (600, A), (999, A), (501, D), (505, D)],  # outside HTTP's 100-599: a broken server, never a page
)
def test_status_verdicts_carry_their_status(status: int, cls: FailureClass) -> None:
    v = classify_response(_resp(status))
    assert v.cls is cls
    assert v.status == status
    assert v.reason == f"http:{status}"


def test_retry_after_is_a_field_of_429_and_transient_verdicts() -> None:
    assert classify_response(_resp(429, **{"Retry-After": "7"})) == Verdict(B, "http:429", 7.0, status=429)
    assert classify_response(_resp(503, **{"Retry-After": "3"})) == Verdict(A, "http:503", 3.0, status=503)
    assert classify_response(_resp(403, **{"Retry-After": "3"})).retry_after is None  # a ban waits for no one


def test_verdicts_not_decided_on_a_status_have_none() -> None:
    """A challenge page is B for what it says, whatever its status: it neither slows the domain down as a
    429/503 would nor spares the proxy as a 429 does (the behaviour before the field existed)."""
    challenge = classify_response(_resp(503, **{"cf-mitigated": "challenge"}))
    assert challenge.cls is B and challenge.status is None
    marker = classify_response(_resp(200, b'<title>Robot Check</title><div class="g-recaptcha"></div>'))
    assert marker.cls is B and marker.status is None
    assert classify_exception(txerror.TimeoutError()).status is None
    refused = classify_exception(BodyTooLarge("received>10 limit=10 stage=download"))
    assert refused.cls is D and refused.status is None


def test_ok_verdicts_are_shared() -> None:
    assert classify_response(_resp(200)) is classify_response(_resp(200))


def test_fleet_of_finds_the_attached_runtime_only() -> None:
    crawler = Crawler.__new__(Crawler)  # no settings needed: only the attribute matters
    assert fleet_of(crawler) is None  # plain Scrapy: components stand aside
    rt = SimpleNamespace()
    attach(crawler, rt)  # type: ignore[arg-type]
    assert fleet_of(crawler) is rt

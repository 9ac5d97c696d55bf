"""scraper.policy.decide.decide: budgets A and B apart, Retry-After, exhausted -> DLQ, D at once (pure, no Redis)."""

from __future__ import annotations

import random

import pytest
from scrapy.settings import Settings

from scraper.policy.decide import DEAD, RETRY, Budgets, decide, request_budgets
from scraper.policy.taxonomy import A, B, D

BUDGETS = Budgets(retry_max=2, rotate_max=3, base=1.0, cap=8.0)


def test_a_retries_until_its_budget_then_exhausted() -> None:
    d = decide(A, "http:502", 502, {A: 2}, BUDGETS, rng=random.Random(1))
    assert d.action == RETRY and 0.0 <= d.delay <= 2.0
    d = decide(A, "http:502", 502, {A: 3}, BUDGETS)
    assert (d.action, d.reason, d.cls) == (DEAD, f"exhausted:{A}", A)


def test_budgets_are_separate() -> None:
    # many bans do not use up the transient budget, and the other way round
    assert decide(A, "timeout", None, {A: 1, B: 9}, BUDGETS).action == RETRY
    assert decide(B, "http:403", 403, {A: 9, B: 3}, BUDGETS).action == RETRY
    d = decide(B, "http:403", 403, {B: 4}, BUDGETS, proxied=True)
    assert (d.action, d.reason, d.cls, d.ban_proxy) == (DEAD, f"exhausted:{B}", B, True)


def test_retry_after_wins_over_backoff() -> None:
    d = decide(A, "http:503", 503, {A: 1}, BUDGETS, retry_after=30.0)
    assert d.delay == 30.0 and d.hold_domain


def test_429_holds_the_domain_and_spares_the_proxy() -> None:
    d = decide(B, "http:429", 429, {B: 1}, BUDGETS, retry_after=5.0, proxied=True)
    assert (d.action, d.cls, d.delay, d.hold_domain, d.ban_proxy) == (RETRY, B, 5.0, True, False)


def test_ban_rotates_at_once_through_another_proxy() -> None:
    d = decide(B, "http:403", 403, {B: 1}, BUDGETS, proxied=True)
    assert (d.delay, d.ban_proxy, d.hold_domain) == (0.0, True, False)
    unproxied = decide(B, "http:403", 403, {B: 1}, BUDGETS, rng=random.Random(2))
    assert not unproxied.ban_proxy and 0.0 <= unproxied.delay <= 1.0


def test_d_goes_to_the_dlq_with_its_reason() -> None:
    d = decide(D, "http:404", 404, {D: 1}, BUDGETS)
    assert (d.action, d.reason, d.cls) == (DEAD, "http:404", D)


def test_scrapys_retry_meta_sets_the_requests_budgets() -> None:
    """A spider's dont_retry and max_retry_times meta were ignored: every request got FLEET_RETRY_MAX."""
    assert request_budgets(BUDGETS, {}) is BUDGETS
    no = request_budgets(BUDGETS, {"dont_retry": True})
    assert (no.retry_max, no.rotate_max) == (0, 0)
    assert decide(A, "http:500", 500, {A: 1}, no).action == DEAD
    assert decide(B, "http:429", 429, {B: 1}, no).reason == f"exhausted:{B}"
    one = request_budgets(BUDGETS, {"max_retry_times": 1})
    assert (one.retry_max, one.rotate_max) == (1, BUDGETS.rotate_max)
    assert decide(A, "http:500", 500, {A: 1}, one).action == RETRY and decide(A, "http:500", 500, {A: 2}, one).action == DEAD
    for junk in (-1, "3", True, None, 2.5):  # not an int >= 0: the default budget
        assert request_budgets(BUDGETS, {"max_retry_times": junk}) is BUDGETS


def test_a_spiders_retry_times_is_its_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:


    from scraper.worker.failures import spider_retry_times

    monkeypatch.delenv("FLEET_RETRY_MAX", raising=False)
    assert spider_retry_times(Settings()) is None  # Scrapy's default (2): FLEET_RETRY_MAX decides
    assert spider_retry_times(Settings({"RETRY_TIMES": 0}, priority="spider")) == 0
    assert spider_retry_times(Settings({"RETRY_TIMES": 5}, priority=25)) == 5  # the project's settings module
    monkeypatch.setenv("FLEET_RETRY_MAX", "3")
    assert spider_retry_times(Settings({"RETRY_TIMES": 5}, priority=25)) is None  # FLEET_* beats the project
    assert spider_retry_times(Settings({"RETRY_TIMES": 1}, priority="spider")) == 1  # the spider beats both


def test_a_spiders_retry_enabled_false_means_no_retry() -> None:
    import scrapy

    from scraper.worker.catalog import worker_settings
    from scraper.worker.failures import spider_retry_times

    class NoRetry(scrapy.Spider):
        name = "no_retry"
        custom_settings = {"RETRY_ENABLED": False}

    s = worker_settings(NoRetry, Settings({"RETRY_ENABLED": False}, priority=20), rendered=False)
    assert s.getbool("RETRY_ENABLED") is False and spider_retry_times(s) == 0
    assert spider_retry_times(worker_settings(scrapy.Spider, Settings(), rendered=False)) is None

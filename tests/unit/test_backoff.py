"""Retry timing: full-jitter bounds and spread, Retry-After parsing (seconds, HTTP date, junk)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from scraper.policy.backoff import MAX_RETRY_AFTER, full_jitter, parse_retry_after, retry_delay

NOW = 1_700_000_000.0  # fixed clock for HTTP-date tests


@pytest.mark.parametrize("base,cap", [(2.0, 120.0), (0.5, 10.0), (1.0, 1.0)])
def test_full_jitter_bounds(base: float, cap: float) -> None:
    rng = random.Random(1234)
    for attempt in range(0, 12):
        ceiling = min(cap, base * 2**attempt)
        draws = [full_jitter(attempt, base=base, cap=cap, rng=rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in draws), (attempt, min(draws), max(draws))
        # the window is actually used: spread out, not stuck at one end
        assert len(set(draws)) > 450
        assert min(draws) < 0.1 * ceiling
        assert max(draws) > 0.9 * ceiling


def test_full_jitter_negative_attempt_is_attempt_zero() -> None:
    rng = random.Random(7)
    assert all(0.0 <= full_jitter(-3, base=2.0, cap=120.0, rng=rng) <= 2.0 for _ in range(200))


def test_full_jitter_seeded_is_reproducible() -> None:
    a = [full_jitter(3, base=2.0, cap=120.0, rng=random.Random(42)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r1, r2 = random.Random(99), random.Random(99)
    s1 = [full_jitter(n % 8, base=1.0, cap=60.0, rng=r1) for n in range(50)]
    s2 = [full_jitter(n % 8, base=1.0, cap=60.0, rng=r2) for n in range(50)]
    assert s1 == s2


def test_full_jitter_cap_dominates_large_attempts() -> None:
    rng = random.Random(5)
    draws = [full_jitter(60, base=2.0, cap=30.0, rng=rng) for _ in range(1000)]
    assert max(draws) <= 30.0
    assert max(draws) > 25.0


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected", [("120", 120.0), (" 5 ", 5.0), ("0.5", 0.5), ("3600", 3600.0)]
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date() -> None:
    value = formatdate(NOW + 90, usegmt=True)  # e.g. "Tue, 14 Nov 2023 22:14:50 GMT"
    assert value.endswith("GMT")
    assert parse_retry_after(value, now=NOW) == pytest.approx(90.0)
    # the numeric-offset form is a valid RFC 5322 date too
    assert parse_retry_after(formatdate(NOW + 30), now=NOW) == pytest.approx(30.0)


def test_parse_retry_after_http_date_in_past_is_none() -> None:
    assert parse_retry_after(formatdate(NOW - 60, usegmt=True), now=NOW) is None
    assert parse_retry_after(formatdate(NOW, usegmt=True), now=NOW) is None


@pytest.mark.parametrize("value", ["0", "-5", "-0.1", "0.0", "nan", "-inf"])
def test_parse_retry_after_non_positive_is_none(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "Tomorrow at noon", "12 apples", "Mon, 99 Foo 2023", "1,5"]
)
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["1e9", "1000000000", "inf"])
def test_parse_retry_after_absurd_is_clamped(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == MAX_RETRY_AFTER


def test_parse_retry_after_far_future_date_is_clamped() -> None:
    value = formatdate(NOW + 10 * 365 * 86400, usegmt=True)
    assert parse_retry_after(value, now=NOW) == MAX_RETRY_AFTER


# -- retry_delay ------------------------------------------------------------------------------


def test_retry_delay_prefers_larger_retry_after() -> None:
    rng = random.Random(3)
    for attempt in range(6):
        # ceiling is at most 2*2^5 = 64 < 100: Retry-After always wins
        assert retry_delay(attempt, base=2.0, cap=120.0, retry_after=100.0, rng=rng) == 100.0


def test_retry_delay_keeps_backoff_when_retry_after_smaller() -> None:
    seed = 11
    expected = full_jitter(6, base=2.0, cap=120.0, rng=random.Random(seed))
    assert expected > 0.001
    got = retry_delay(6, base=2.0, cap=120.0, retry_after=0.001, rng=random.Random(seed))
    assert got == expected


def test_retry_delay_without_retry_after_is_full_jitter() -> None:
    expected = full_jitter(2, base=1.0, cap=10.0, rng=random.Random(8))
    assert retry_delay(2, base=1.0, cap=10.0, rng=random.Random(8)) == expected


def test_retry_after_date_past_datetime_range_is_invalid_not_a_crash() -> None:
    """Probe: a Retry-After of year 99999999999 raised OverflowError through the classifier (a 429 became an A
    error:OverflowError); it is an invalid header now, and the status is classified as any other 429."""
    from scraper.policy.backoff import parse_retry_after

    assert parse_retry_after("12 Jan 99999999999 00:00:00 GMT") is None
    assert parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT") is None

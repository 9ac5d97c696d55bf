"""The failure policy: what happens to a request that failed with class A, B or D, as a pure function.

Why pure: the budgets, Retry-After and the domain slow-down are the rules operators ask about; here
they read as one function of (class, status, attempts, budgets) with no Redis and no clock, and the
unit tests (tests/unit/test_core_policy.py) pin them. The applier (scraper.worker.failures) carries a
:class:`Decision` out: ban the proxy, hold the domain, then nack or DLQ.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from scraper.policy.backoff import retry_delay
from scraper.policy.taxonomy import A, B, D, FailureClass

__all__ = ["DEAD", "DOMAIN_SLOWDOWN_STATUS", "RETRY", "Budgets", "Decision", "decide", "request_budgets"]

# Answers that mean "this whole site wants you to slow down".
DOMAIN_SLOWDOWN_STATUS = frozenset({429, 503})

RETRY, DEAD = "retry", "dead"


@dataclass(frozen=True, slots=True)
class Budgets:
    """FLEET_RETRY_MAX (class A), FLEET_ROTATE_MAX (class B) and the backoff window."""

    retry_max: int
    rotate_max: int
    base: float
    cap: float


@dataclass(frozen=True, slots=True)
class Decision:
    """``action`` RETRY: nack to DELAYED after ``delay`` seconds (at least until the domain's hold ends,
    if ``hold_domain``); DEAD: to the DLQ with ``reason``. ``ban_proxy``: the proxy is bad for this
    domain whatever happens to the request. ``cls``: the class the outcome counts under, the failure's
    own (A for ``exhausted:A``), so nothing parses it back out of ``reason``."""

    action: str
    reason: str
    cls: FailureClass
    delay: float = 0.0
    hold_domain: bool = False
    ban_proxy: bool = False


def request_budgets(budgets: Budgets, meta: Mapping[str, Any]) -> Budgets:
    """The budgets of one request, with Scrapy's retry meta that a spider sets in its code applied:
    ``dont_retry`` (never retried: no A retry, no B rotation; the first failure goes to the DLQ) and
    ``max_retry_times`` (its A budget, as RetryMiddleware reads it). Anything else in them is ignored."""
    if meta.get("dont_retry"):
        return replace(budgets, retry_max=0, rotate_max=0)
    n = meta.get("max_retry_times")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return replace(budgets, retry_max=n)
    return budgets


def decide(cls: FailureClass, reason: str, status: int | None, attempts: dict[str, int], budgets: Budgets, *,
           retry_after: float | None = None, proxied: bool = False,
           rng: random.Random | None = None) -> Decision:
    """What to do with a request that failed with ``cls``; ``attempts`` already counts this failure.

    A and B spend separate budgets (a ban does not use up the transient budget); past its budget a class
    becomes ``exhausted:<cls>`` in the DLQ. D goes to the DLQ at once. A 429 or 503 holds the whole
    domain fleet-wide. A 429 is the domain's, not the proxy's: it is not banned, and the request waits
    for Retry-After. Any other B goes out through another proxy at once (banned first) or, with no
    proxy to rotate, after a backoff."""
    ban = cls == B and status != 429 and proxied
    if cls == A and attempts.get(A, 0) > budgets.retry_max:
        return Decision(DEAD, f"exhausted:{A}", A, ban_proxy=ban)
    if cls == B and attempts.get(B, 0) > budgets.rotate_max:
        return Decision(DEAD, f"exhausted:{B}", B, ban_proxy=ban)
    if cls == D:
        return Decision(DEAD, reason, D, ban_proxy=ban)
    if cls == A:
        delay = retry_delay(attempts[A] - 1, base=budgets.base, cap=budgets.cap, retry_after=retry_after, rng=rng)
    elif status == 429:
        delay = retry_after or 0.0  # a 429 slows the domain; it does not burn the proxy
    elif proxied:
        delay = 0.0  # at once, through another proxy (banned first)
    else:
        # no proxy to rotate: wait a little before trying the same route again
        delay = retry_delay(attempts[B] - 1, base=budgets.base, cap=budgets.cap, retry_after=retry_after, rng=rng)
    return Decision(RETRY, reason, cls, delay=delay, hold_domain=status in DOMAIN_SLOWDOWN_STATUS, ban_proxy=ban)

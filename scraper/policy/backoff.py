"""Retry timing: full-jitter exponential backoff and Retry-After parsing (ours to own).

Full jitter, ``U(0, min(cap, base * 2**n))``, spreads a burst of retries over the whole window so a
fleet of workers does not hammer a recovering site in lockstep (AWS Architecture Blog, "Exponential
Backoff and Jitter").
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER", "full_jitter", "parse_retry_after", "retry_delay"]

# A Retry-After beyond this is treated as hostile or broken and clamped.
MAX_RETRY_AFTER = 3600.0


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based)."""
    r = rng or random
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return r.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent/invalid.

    Negative or zero values become None (no constraint); absurd ones are clamped to MAX_RETRY_AFTER.
    """
    if not value:
        return None
    value = value.strip()
    seconds: float
    try:
        seconds = float(value)
    except ValueError:
        try:
            dt = parsedate_to_datetime(value)
            if dt is None:
                return None
            seconds = dt.timestamp() - (time.time() if now is None else now)
        # OverflowError: a year past datetime's (a hostile "12 Jan 99999999999"), which crashed the classifier:
        # the 429/503 was then an A error:OverflowError instead of its status's class
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds or seconds <= 0:  # NaN or non-positive
        return None
    return min(seconds, MAX_RETRY_AFTER)


def retry_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """The delay for a class-A retry: jittered backoff, or Retry-After when that is larger."""
    delay = full_jitter(attempt, base=base, cap=cap, rng=rng)
    if retry_after is not None and retry_after > delay:
        return retry_after
    return delay

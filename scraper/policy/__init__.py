"""Pure decisions, no I/O: the failure taxonomy (A/B/C/D), what to do about an outcome (decide), backoff,
drift checks, refused-request reasons and the URL scheme allow-list. Everything here is unit-testable alone.
"""

__all__ = [
    "backoff",
    "decide",
    "drift",
    "refused",
    "robots",
    "taxonomy",
    "urls",
]

"""Spiders of the parity suite: each runs unchanged under plain Scrapy and under Fleet (tests/parity).

They read the local site's address from ``PARITY_BASE`` (and a port that refuses connections from
``PARITY_CLOSED``) at import, as a user's spider would hold a real site's address in ``start_urls``.
"""

from __future__ import annotations

import os

__all__ = ["BASE", "CLOSED"]

BASE = os.environ.get("PARITY_BASE", "http://127.0.0.1:9")
CLOSED = os.environ.get("PARITY_CLOSED", "http://127.0.0.1:9")

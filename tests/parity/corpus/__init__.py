"""Spiders of the parity suite: each runs unchanged under plain Scrapy and under Fleet (tests/parity).

They read the local site's address from ``PARITY_BASE`` at import, as a user's spider would hold a
real site's address in ``start_urls``.
"""

from __future__ import annotations

import os

__all__ = ["BASE"]

BASE = os.environ.get("PARITY_BASE", "http://127.0.0.1:9")

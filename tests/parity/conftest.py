"""The parity suite's local site: one per test module (its routes are read-only, so tests share it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.parity.site import ParitySite


@pytest.fixture(scope="module")
def site() -> Iterator[ParitySite]:
    s = ParitySite().start()
    try:
        yield s
    finally:
        s.stop()

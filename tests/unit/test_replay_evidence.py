"""fleet replay reads its evidence records as input: a field of the wrong type is left out, never a traceback
(found by review: a surrogate Content-Type, a non-string url for a CrawlSpider, a non-object record)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scraper.cli.replay import _load_evidence
from scraper.store.objects import evidence_key


class _Store:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get(self, key: str) -> bytes:
        if key != evidence_key("s", "r", "C", "f" * 16):
            raise KeyError(key)
        return self.data


@pytest.mark.parametrize("doc", [
    b"[1, 2]", b"not json", b"\xff\xfe", json.dumps({"url": 5, "callback": ["x"], "cb_kwargs": "a", "meta": 3,
                                                     "content_type": "text/html; charset=\ud800"}).encode(),
    json.dumps({"url": "file:///etc/passwd", "callback": "__init__"}).encode(),
])
def test_hostile_evidence_fields_are_left_out(doc: bytes) -> None:
    assert _load_evidence(_Store(doc), "s", "r", "f" * 16) == {}  # type: ignore[arg-type]


def test_good_evidence_fields_are_kept() -> None:
    good: dict[str, Any] = {"url": "https://a.test/p", "callback": "_callback", "cb_kwargs": {"k": 1},
                            "meta": {"rule": 1}, "content_type": "text/html; charset=shift_jis", "other": 1}
    out = _load_evidence(_Store(json.dumps(good).encode()), "s", "r", "f" * 16)  # type: ignore[arg-type]
    assert out == {k: v for k, v in good.items() if k != "other"}

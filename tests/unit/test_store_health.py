"""Per-object store failures vs store outages: the key builder's guard, the outage clock, safe reasons."""

from __future__ import annotations

import pytest

from scraper.store.backends import InvalidKeyError, StoreError
from scraper.store.base import validate_key as _validate_key
from scraper.store.health import MAX_REASON, StoreOutage, probe_key, reason
from scraper.store.objects import evidence_key, items_key, raw_key

FP = "ab12cd34ef56ab78"


def test_keys_of_plain_names() -> None:
    assert items_key("books", "2026-01", FP) == f"items/spider=books/run=2026-01/ab/{FP}.jsonl"
    assert raw_key("books", "r", FP) == f"raw/spider=books/run=r/ab/{FP}.html.gz"
    assert evidence_key("books", "r", "D", FP) == f"evidence/spider=books/run=r/D/{FP}.json"


@pytest.mark.parametrize(
    "spider,run,fp",
    [
        ("books", "../../../../tmp/x", FP),  # the run: made the whole batch's sync fail
        ("books", "..", FP),
        ("books", ".", FP),
        ("books", "", FP),
        ("books", "a/b", FP),  # no escape, but it would nest inside run "a" (its listing and export)
        ("books", "a\\b", FP),
        ("books", "a\x00b", FP),
        ("books", "r" * 201, FP),
        ("books", "\u00e9" * 101, FP),  # 202 UTF-8 bytes
        ("../x", "r", FP),
        ("books", "r", "../../etc/passwd"),
        ("books", "r", ".."),
        ("books", "r", ""),
    ],
)
def test_key_builders_refuse_names_that_are_not_one_segment(spider: str, run: str, fp: str) -> None:
    for build in (lambda: items_key(spider, run, fp), lambda: raw_key(spider, run, fp),
                  lambda: evidence_key(spider, run, "D", fp)):
        with pytest.raises(InvalidKeyError):
            build()


def test_odd_but_valid_names_still_make_keys() -> None:
    with pytest.raises(InvalidKeyError):  # the key builders use scraper.queue.names' rule for every name
        items_key("books", "run 1:été=2", FP)
    with pytest.raises(InvalidKeyError):  # and the store's own check refuses a '..' segment whatever built it
        _validate_key(f"items/spider=books/run=r/../{FP}.jsonl")
    assert _validate_key(items_key("books", "run-1.x_2", FP)) == f"items/spider=books/run=run-1.x_2/ab/{FP}.jsonl"


def test_reason_is_one_redacted_bounded_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekr1t-value")
    exc = StoreError("s3 store: put s3://b/k failed: via https://user:pw@proxy:8080 sekr1t-value\nsecond line")
    text = reason(exc)
    assert text.startswith("StoreError: s3 store: put")
    assert "pw@" not in text and "sekr1t-value" not in text and "\n" not in text
    assert "***@proxy" in text
    assert len(reason(StoreError("x" * 10_000))) == MAX_REASON
    assert reason(OSError()) == "OSError"


@pytest.mark.parametrize("worker", ["host-12", "a/b", "../..", "", "w" * 300, "\udc80"])
def test_probe_key_is_always_a_valid_key(worker: str) -> None:
    key = probe_key(worker)
    assert _validate_key(key) == key and key.startswith("_fleet/probe/")
    assert probe_key("host-12") == "_fleet/probe/host-12"
    assert probe_key("a/b") != probe_key("a_b")  # sanitized names of two workers do not collide


def test_outage_clock_counts_and_limit() -> None:
    now = [100.0]
    outage = StoreOutage(limit=30.0, clock=lambda: now[0])
    assert not outage.down and not outage.exceeded() and outage.elapsed() == 0.0
    assert outage.begin(StoreError("NoSuchBucket")) is True
    now[0] += 10
    assert outage.begin(StoreError("connection refused")) is False  # the same outage goes on
    assert outage.reason == "StoreError: connection refused" and outage.probes_failed == 2
    assert outage.down and not outage.exceeded()
    now[0] += 20.5
    assert outage.exceeded()
    assert outage.end() == pytest.approx(30.5)
    assert not outage.down and not outage.exceeded()
    assert outage.begin(StoreError("again")) is True and outage.outages == 2

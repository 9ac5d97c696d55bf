"""The run manifest's rules, pure: reconciliation, completeness, coverage and schema, keys."""

from __future__ import annotations

from typing import Any

import pytest

from scraper.store.backends import LocalStore
from scraper.store.manifest import (
    build,
    coverage_and_schema,
    list_manifests,
    manifest_key,
    read_manifest,
    reconcile,
    write_manifest,
)


def _m(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(spider="s", run="r", spider_version="1", item_key=(), writer="fleet run", final=True,
                                started_at="2024-01-01T00:00:00Z", finished_at=None, elapsed_s=1.0, seeded=1, seen=10,
                                done=10, dlq=0, backlog={}, scope="run", ignored=0, outcomes={}, breakers_open=[],
                                tally={}, exit_code=0)
    args.update(over)
    return build(**args)


def test_reconciliation_says_which_side_is_off() -> None:
    assert reconcile(seen=10, done=6, dlq=1, parked=2, queued=1, scope="run")["ok"]
    short = reconcile(seen=10, done=6, dlq=1, parked=1, queued=1, scope="run")
    assert not short["ok"] and short["unaccounted"] == 1 and "neither done" in short["problem"]
    over = reconcile(seen=10, done=10, dlq=1, parked=0, queued=0, scope="spider")
    assert over["unaccounted"] == -1 and "exceeds" in over["problem"] and "all runs" in over["problem"]


def test_refused_start_entries_are_not_counted_against_seen() -> None:
    """A probe: a scrapy-redis start entry refused before it became a request (no fingerprint, never in SEEN)
    is a DLQ entry of the run; counted against SEEN, the run could never reconcile (done 1 + dlq 1 > seen 1)."""
    rec = reconcile(seen=1, done=1, dlq=1, parked=0, queued=0, scope="run", dlq_unseen=1)
    assert rec["ok"] and rec["dlq_unseen"] == 1 and rec["dlq"] == 1
    m = _m(seen=10, done=10, dlq=2, exit_code=4, dlq_unseen=2)
    assert m["complete"] is True and m["counts"]["dlq"] == 2
    assert _m(seen=10, done=10, dlq=2, exit_code=4)["complete"] is False


def test_complete_only_when_drained_reconciled_and_nothing_open() -> None:
    assert _m()["complete"] is True
    assert _m(done=9, dlq=1, exit_code=4)["complete"] is True  # DLQ entries are settled
    parked = _m(done=7, backlog={"parked": 3}, exit_code=5)
    assert parked["complete"] is False and parked["counts"]["parked"] == 3
    assert "3 requests parked" in parked["incomplete_reasons"]
    assert _m(final=False)["complete"] is False
    # a breaker is the spider's: it keeps a run incomplete through the run's own parked requests, not alone
    # (probe round 2: another run's drift flipped a finished run's manifest on `fleet runs --refresh`)
    assert _m(breakers_open=["a.example"])["complete"] is True
    parked_open = _m(done=7, backlog={"parked": 3}, breakers_open=["a.example"], exit_code=5)
    assert "breaker open for a.example" in parked_open["incomplete_reasons"] and parked_open["complete"] is False
    assert _m(done=9)["complete"] is False  # one request unaccounted for
    assert _m(exit_code=3, why_incomplete="a worker exited with 3")["incomplete_reasons"] == ["a worker exited with 3"]


def test_a_cancelled_run_reconciles_and_says_each_reason_once() -> None:
    """A user-contract probe: a cancelled run's manifest blamed its dropped requests as lost ("18 of 20 ...
    neither done ..."), and listed "18 requests still queued" twice (fleet run's reason said it already)."""
    why = ("run incomplete: the run was cancelled (fleet cancel s --run r); 3 requests still queued "
           "(finish it with fleet run s --resume r)")
    m = _m(seen=20, done=2, backlog={"ready": 3}, exit_code=5, why_incomplete=why, cancelled=True)
    rec = m["reconciliation"]
    assert rec["ok"] and rec["problem"] is None and rec["cancelled_dropped"] == 15 and rec["unaccounted"] == 0
    assert m["incomplete_reasons"] == [why] and m["complete"] is False
    assert _m(seen=20, done=2, cancelled=True, exit_code=None)["incomplete_reasons"] == ["the run was cancelled"]
    assert "cancelled_dropped" not in _m()["reconciliation"]


def test_rejected_work_is_in_the_counts() -> None:
    """Rejected input URLs and requests that could not be queued are in no other count: an analyst reading only
    the manifest could not tell pages were skipped (a complete run can still have them: fleet run exits 2)."""
    m = _m(rejected={"rejected": 2, "discovered_rejected": 3}, exit_code=2)
    assert (m["counts"]["rejected"], m["counts"]["discovered_rejected"], m["complete"]) == (2, 3, True)
    assert (_m()["counts"]["rejected"], _m()["counts"]["discovered_rejected"]) == (0, 0)


def test_coverage_and_schema_from_tallies() -> None:
    cov, schema = coverage_and_schema({"items": 4, "c:a": 4, "c:b": 1, "t:string:a": 4, "t:null:b": 3,
                                       "t:integer:b": 1, "t:string:x:y": 2})
    assert cov == {"a": 1.0, "b": 0.25, "x:y": 0.0}
    assert schema == {"a": "string", "b": "integer|null", "x:y": "string"}
    assert coverage_and_schema({}) == ({}, {})


def test_manifest_round_trip_and_bad_names(tmp_path: Any) -> None:
    store = LocalStore(f"file://{tmp_path}")
    m = _m()
    assert write_manifest(store, m) == manifest_key("s", "r") == "runs/spider=s/run=r/manifest.json"
    assert read_manifest(store, "s", "r") == m
    store.put("runs/spider=s/run=bad/manifest.json", b"not json")
    assert [(k.split("/")[2], v is not None) for k, v in list_manifests(store, "s")] == [("run=bad", False),
                                                                                        ("run=r", True)]
    assert read_manifest(store, "s", "none") is None
    with pytest.raises(ValueError):
        manifest_key("s", "../x")

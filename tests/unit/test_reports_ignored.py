"""An IgnoreRequest reported while the worker hands its leases back (scraper.worker.reports.Reports.ignored) is
neither counted nor acknowledged: the fetch was cut short by the shutdown (a browser page closed under
Playwright ends that way) and the lease goes back to READY, released, as ``fail`` already treats failures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from scrapy.exceptions import IgnoreRequest

from scraper.queue.client import Lease
from scraper.queue.envelope import Envelope
from scraper.worker.committer import Flags
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.reports import Reports


def _reports(acked: list[str], counted: list[str]) -> tuple[Reports, Flags]:
    flags = Flags()
    stats = SimpleNamespace(inc_value=lambda key, *a, **k: counted.append(key))
    log = SimpleNamespace(info=lambda *a, **k: None)
    none: Any = SimpleNamespace()
    r = Reports(Ledger(), flags, SimpleNamespace(done=lambda *a: None),  # type: ignore[arg-type]
                finisher=none, failures=none, discovery=none, spawn=lambda c: None, stats=stats, log=log,
                committer=SimpleNamespace(ack_only=lambda st: acked.append(st.id)))  # type: ignore[arg-type]
    return r, flags


def _state(lid: str) -> LeaseState:
    return LeaseState(Lease(lid, b"", 1, "t"), Envelope(url="https://a.example/", spider="s", run="r", fp="0" * 16))


def test_ignored_while_releasing_is_left_to_the_release() -> None:
    acked: list[str] = []
    counted: list[str] = []
    reports, flags = _reports(acked, counted)
    reports.ignored(_state("a"), IgnoreRequest("offsite"))
    assert acked == ["a"] and counted == ["fleet/ignored"]
    flags.releasing = True
    late = _state("b")
    reports.ignored(late, IgnoreRequest("page closed"))
    assert acked == ["a"] and counted == ["fleet/ignored"] and not late.settled

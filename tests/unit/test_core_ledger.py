"""scraper.worker.ledger: when a request is finished, what the ledger holds, and the flat names others read."""

from __future__ import annotations

from scrapy import Request

from scraper.queue.client import Lease
from scraper.queue.envelope import META_KEY, Envelope
from scraper.worker.ledger import LOCAL_REQUESTS, LeaseState, Ledger


def state(lid: str = "l1", token: str = "t") -> LeaseState:
    return LeaseState(Lease(lid, b"", 1, token), Envelope(url="https://a.example/", spider="s", run="r", fp="f"))


def test_finished_only_when_output_exhausted_and_items_settled() -> None:
    st = state()
    assert not st.finished()
    st.out.pending = 1
    st.out.exhausted = True
    assert not st.finished()
    st.out.pending = 0
    assert st.finished()


def test_flat_names_read_the_records() -> None:
    st = state()
    st.proxy_id = "p1"  # middlewares.proxy writes it
    st.status = 200
    st.out.items.append({"x": 1})
    assert (st.fetch.proxy_id, st.fetch.status, st.items, st.pending, st.exhausted) == ("p1", 200, [{"x": 1}], 0, False)


def test_activate_lookup_forget() -> None:
    ledger = Ledger()
    st = state()
    ledger.buffer.append(st)
    assert ledger.holds("l1") and ledger.find("l1") is st and ledger.held() == 1
    ledger.buffer.popleft()
    req = Request("https://a.example/")
    ledger.activate(st, req)
    assert req.meta[META_KEY] == "l1" and ledger.state_for(req) is st and ledger.fetching() == 1
    st.fetch.status = 200
    assert ledger.fetching() == 0  # answered: waits only for writes and commit
    ledger.forget(state("l1"))  # another delivery's state of the same id: not this one
    assert ledger.is_live(st)
    ledger.forget(st)
    assert ledger.held() == 0 and ledger.state_for(req) is None


def test_leases_leave_out_unconfirmed_speculation() -> None:
    ledger = Ledger()
    ledger.buffer.append(state("a", "ta"))
    spec = state("b", "")
    spec.claim = object()  # type: ignore[assignment]
    ledger.buffer.append(spec)
    assert ledger.leases() == [("a", "ta")]


def test_local_children_are_bounded() -> None:
    ledger = Ledger()
    env = Envelope(url="https://a.example/", spider="s", run="r", fp="f")
    for i in range(LOCAL_REQUESTS + 5):
        ledger.remember_child(f"c{i}", env, Request("https://a.example/"))
    assert len(ledger.local) == LOCAL_REQUESTS
    assert ledger.take_child("c0") is None and ledger.take_child(f"c{LOCAL_REQUESTS + 4}") is not None

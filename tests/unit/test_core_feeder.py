"""Feeder adoption and speculation on an in-memory ledger (no Redis): a lease batch becomes buffered
states, our own re-leased request is never started twice, a bad entry is settled on its own, a child we
discovered is reused, and a void speculative fetch is dropped from the ledger."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from scrapy import Request

from scraper.infra.config import FleetConfig
from scraper.queue.client import Lease, LeaseBatch
from scraper.queue.envelope import Envelope
from scraper.worker.breakers import Breakers
from scraper.worker.committer import Flags
from scraper.worker.feeder import Feeder, Speculation
from scraper.worker.health import Health
from scraper.worker.ledger import VOID_KEY, LeaseState, Ledger

STATS = SimpleNamespace(inc_value=lambda *a, **k: None)
LOG = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None, error=lambda *a, **k: None)


def env(url: str = "https://a.example/") -> Envelope:
    return Envelope(url=url, spider="s", run="r", fp="0123456789abcdef")


def feeder() -> tuple[Feeder, Ledger, list[tuple[LeaseState, str]]]:
    config = FleetConfig.from_env()
    ledger = Ledger()
    dead: list[tuple[LeaseState, str]] = []

    async def beat() -> None: ...

    async def probe() -> None: ...

    f = Feeder(ledger, Health(config, LOG, STATS, lambda r: None), Flags(), worker_id="w", lease_seconds=30,
               prefetch=4, concurrency=8, stats=STATS, log=LOG, kick=lambda: None, beat=beat,
               reaped=lambda r: None, probe_store=probe, dead=lambda st, reason, detail, raw: dead.append((st, reason)))
    f.spider = "s"
    return f, ledger, dead


def test_adopt_buffers_rejects_and_readopts() -> None:
    f, ledger, dead = feeder()
    good = Lease("a", env().dumps().encode(), 1, "ta")
    other = Lease("b", Envelope(url="https://a.example/", spider="x", run="r", fp="0" * 16).dumps().encode(), 1, "tb")
    f.adopt(LeaseBatch(leased=[good, Lease("c", b"not json", 1, "tc"), other]))
    assert [s.id for s in ledger.buffer] == ["a"]
    assert [(s.id, reason) for s, reason in dead] == [("c", "bad_envelope"), ("b", "bad_envelope")]
    st = ledger.buffer[0]
    f.adopt(LeaseBatch(leased=[Lease("a", b"", 2, "ta2")]))  # our own lease came back after a stall
    assert list(ledger.buffer) == [st] and (st.lease.token, st.lease.deliveries) == ("ta2", 2)


def test_adopt_reuses_a_child_we_discovered() -> None:
    f, ledger, _ = feeder()
    req = Request("https://a.example/2")
    ledger.remember_child("c1", env("https://a.example/2"), req)
    f.adopt(LeaseBatch(leased=[Lease("c1", b"{}", 1, "t")]))
    assert ledger.buffer[0].local is req


def test_void_speculation_leaves_the_ledger_and_marks_the_fetch() -> None:
    async def go() -> None:
        ledger = Ledger()
        spec_ = Speculation(ledger, Breakers(SimpleNamespace(send=lambda a: None), STATS, LOG,  # type: ignore[arg-type]
                                             lambda c: None), STATS, LOG, lambda: None, lambda leases: None,
                            lambda p: None)
        parent = LeaseState(Lease("p", b"", 1, "tp"), env())
        parent.out.discovered += [env("https://a.example/1"), env("https://a.example/2")]
        parent.out.discovered_ids += ["k1", "k2"]
        spec_.speculate(parent)
        spec = parent.progress.spec
        assert spec is not None and parent.progress.spec_index == 2 and ledger.buffer[0] is spec
        ledger.buffer.popleft()
        req = Request("https://a.example/2")
        ledger.activate(spec, req)
        fut: Any = spec.claim
        spec_.answered(spec, "", -1)  # held / breaker: not ours
        assert fut.result() is False and spec.settled and not ledger.active
        assert req.meta[VOID_KEY] and Speculation.drop_void(req)
        assert not spec_.breakers.may_speculate("a.example")  # no guessing there for a while
    asyncio.run(go())

"""Feeder adoption and speculation on an in-memory ledger (no Redis): a lease batch becomes buffered
states, our own re-leased request is never started twice, a bad entry is settled on its own, a child we
discovered is reused, a void speculative fetch is dropped from the ledger, and a child this worker knows is
queued is never speculated on."""

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


def env(url: str = "https://a.example/", fp: str = "0123456789abcdef") -> Envelope:
    return Envelope(url=url, spider="s", run="r", fp=fp)


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
        parent.out.discovered += [env("https://a.example/1", "1" * 16), env("https://a.example/2", "2" * 16)]
        parent.out.discovered_ids += ["k1", "k2"]
        spec_.finished(parent, True)
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


def speculation() -> Speculation:
    return Speculation(Ledger(), Breakers(SimpleNamespace(send=lambda a: None), STATS, LOG,  # type: ignore[arg-type]
                                          lambda c: None), STATS, LOG, lambda: None, lambda leases: None, lambda p: None)


def test_speculation_skips_what_this_worker_queued() -> None:
    """Page 1 links to a footer page and to page 2; page 2 links to the same footer page last: page 2's
    speculation goes to its other new link, not to the footer page page 1 already queued."""
    async def go() -> None:
        spec_ = speculation()
        p1 = LeaseState(Lease("p1", b"", 1, "t1"), env("https://a.example/1", "a" * 16))
        p1.out.discovered += [env("https://a.example/2", "2" * 16), env("https://a.example/about", "f" * 16)]
        p1.out.discovered_ids += ["k2", "kf"]
        spec_.finished(p1, True)
        assert p1.progress.spec_index == 2  # READY's next: the last link
        p2 = LeaseState(Lease("p2", b"", 1, "t2"), env("https://a.example/2", "2" * 16))
        p2.out.discovered += [env("https://a.example/3", "3" * 16), env("https://a.example/about", "f" * 16)]
        p2.out.discovered_ids += ["k3", "kf2"]
        spec_.finished(p2, True)
        spec = p2.progress.spec
        assert p2.progress.spec_index == 1 and spec is not None and spec.id == "k3"
        p3 = LeaseState(Lease("p3", b"", 1, "t3"), env("https://a.example/3", "3" * 16))
        p3.out.discovered += [env("https://a.example/1", "a" * 16), env("https://a.example/about", "f" * 16)]
        p3.out.discovered_ids += ["k1", "kf3"]
        spec_.finished(p3, True)  # every link known: nothing to guess
        assert p3.progress.spec is None
    asyncio.run(go())


def test_speculation_skips_the_page_itself_and_where_its_redirects_landed() -> None:
    async def go() -> None:
        spec_ = speculation()
        page = LeaseState(Lease("p", b"", 1, "t"), env("https://a.example/old", "a" * 16))
        page.fetch.hops = ["b" * 16]  # /old redirected to /new, recorded SEEN with this page's commit
        page.out.discovered += [env("https://a.example/x", "c" * 16), env("https://a.example/new", "b" * 16),
                                env("https://a.example/old", "a" * 16)]
        page.out.discovered_ids += ["kx", "knew", "kold"]
        spec_.finished(page, True)
        assert page.progress.spec_index == 1  # /x: the only link that is not this very page
    asyncio.run(go())

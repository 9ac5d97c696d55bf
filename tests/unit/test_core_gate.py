"""The politeness gate on an in-memory ledger and queue (no Redis): the policy read from the settings the
user set (the project's settings.py at 25, the spider's at 30 and above; Fleet's defaults at 20 gate nothing),
a gated state waits outside the engine and comes back granted, the waiting per domain is
bounded (the rest deferred), permits go back once, and shutdown hands every waiting lease back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from scrapy.settings import Settings

from scraper.policy.politeness import Politeness, PolitenessError
from scraper.queue.client import Lease
from scraper.queue.envelope import Envelope
from scraper.queue.gating import GateReply
from scraper.worker.gate import RATE_WINDOW, WAITING_PER_DOMAIN, Gate, Rates
from scraper.worker.ledger import LeaseState, Ledger, confirmed_leases

STATS = SimpleNamespace(inc_value=lambda *a, **k: None)
LOG = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None)


class FakeQueue:
    def __init__(self, grant: int) -> None:
        self.grant = grant
        self.released: list[tuple[str, str, int, str]] = []

    async def gate(self, domain: str, ids: Any, **kw: Any) -> GateReply:
        n = min(self.grant, len(ids))
        self.grant -= n
        return GateReply(n, 0 if n == len(ids) else 50, n, kw["limit"], None, (0,) * n)

    async def ungate(self, entries: Any, ttl: float) -> int:
        self.released += list(entries)
        return len(entries)

    async def report_waiting(self, worker: str, counts: dict[str, int]) -> None: ...


def state(i: int, host: str = "a.example") -> LeaseState:
    return LeaseState(Lease(f"id{i}", b"", 1, f"t{i}"),
                      Envelope(url=f"https://{host}/{i}", spider="s", run="r", fp="0123456789abcdef"))


def test_policy_counts_only_the_spiders_own_settings() -> None:
    s = Settings({"CONCURRENT_REQUESTS_PER_DOMAIN": 32, "DOWNLOAD_DELAY": 0}, priority="project")
    assert not Politeness.from_settings(s).active  # the worker's default and the project's: nothing gated
    s.set("CONCURRENT_REQUESTS_PER_DOMAIN", 2, priority="spider")
    p = Politeness.from_settings(s, {"slow.example": {"DOWNLOAD_DELAY": 1.5, "FLEET_DOMAIN_BURST": 2}})
    assert p.for_domain("x.example").limit == 2 and p.for_domain("x.example").delay == 0
    sub = p.for_domain("www.slow.example")
    assert (sub.limit, sub.delay, sub.burst) == (2, 1.5, 2)
    with pytest.raises(PolitenessError, match="unknown key"):
        Politeness.from_settings(s, {"a.example": {"DOWNLOAD_DELAI": 1}})
    with pytest.raises(PolitenessError, match="outside"):
        Politeness.from_settings(s, {"a.example": {"DOWNLOAD_DELAY": -1}})


def _fleet_defaults() -> Settings:
    """What a worker's settings hold below the project's layer: Fleet's settings module and the worker's own
    per-domain default (its concurrency), both at Scrapy's ``project`` priority (20)."""
    return Settings({"CONCURRENT_REQUESTS": 8, "CONCURRENT_REQUESTS_PER_DOMAIN": 8, "DOWNLOAD_DELAY": 0},
                    priority="project")


def test_policy_counts_the_projects_settings_module() -> None:
    """A Scrapy project's settings.py (priority 25: scraper.worker.project.PRIORITY) gates as custom_settings
    does: ``scrapy startproject``'s CONCURRENT_REQUESTS_PER_DOMAIN = 1 and DOWNLOAD_DELAY = 1 hold fleet-wide."""
    s = _fleet_defaults()
    s.set("CONCURRENT_REQUESTS_PER_DOMAIN", 1, priority=25)
    s.set("DOWNLOAD_DELAY", 1, priority=25)
    p = Politeness.from_settings(s)
    assert p.active
    assert (p.base.limit, p.base.delay, p.base.randomize, p.base.aimd) == (1, 1.0, True, False)
    s.set("RANDOMIZE_DOWNLOAD_DELAY", False, priority=25)
    s.set("FLEET_DOMAIN_BURST", 3, priority=25)
    assert (Politeness.from_settings(s).base.randomize, Politeness.from_settings(s).base.burst) == (False, 3)
    a = _fleet_defaults()
    a.setdict({"AUTOTHROTTLE_ENABLED": True, "AUTOTHROTTLE_TARGET_CONCURRENCY": 3,
               "CONCURRENT_REQUESTS_PER_DOMAIN": 6}, priority=25)
    base = Politeness.from_settings(a).base
    assert (base.aimd, base.start, base.wmax, base.limit) == (True, 3.0, 6, 6)


def test_spider_values_beat_the_projects_and_domain_settings_beat_both() -> None:
    s = _fleet_defaults()
    s.setdict({"CONCURRENT_REQUESTS_PER_DOMAIN": 1, "DOWNLOAD_DELAY": 2, "RANDOMIZE_DOWNLOAD_DELAY": False},
              priority=25)
    s.setdict({"DOWNLOAD_DELAY": 0.5, "CONCURRENT_REQUESTS_PER_DOMAIN": 4}, priority="spider")
    p = Politeness.from_settings(s, {"api.example": {"DOWNLOAD_DELAY": 3, "CONCURRENT_REQUESTS_PER_DOMAIN": 2}})
    assert (p.base.limit, p.base.delay, p.base.randomize) == (4, 0.5, False)  # the project's RANDOMIZE stays
    api = p.for_domain("v2.api.example")
    assert (api.limit, api.delay, api.randomize) == (2, 3.0, False)
    # a spider's DOWNLOAD_DELAY = 0 switches the project's spacing off; its per-domain limit still holds
    s.set("DOWNLOAD_DELAY", 0, priority="spider")
    s.set("CONCURRENT_REQUESTS_PER_DOMAIN", 1, priority="spider")
    p = Politeness.from_settings(s, {"api.example": {"DOWNLOAD_DELAY": 1}})
    assert (p.base.limit, p.base.delay) == (1, 0.0) and p.for_domain("api.example").delay == 1.0
    # domain_settings gate a domain of a project that gates nothing itself
    q = Politeness.from_settings(_fleet_defaults(), {"slow.example": {"DOWNLOAD_DELAY": 2}})
    assert q.active and not q.base.gated and q.for_domain("slow.example").delay == 2.0


def test_values_below_the_projects_priority_gate_nothing() -> None:
    """Scrapy's defaults, Fleet's settings module and the worker's per-domain default (20), or anything under
    the project's layer, whatever their values: no gate, so no Redis call on the hot path."""
    assert not Politeness.from_settings(Settings()).active  # Scrapy's defaults alone
    for prio in ("default", "project", 24):
        s = _fleet_defaults()
        s.setdict({"CONCURRENT_REQUESTS_PER_DOMAIN": 1, "DOWNLOAD_DELAY": 2, "FLEET_DOMAIN_BURST": 2,
                   "AUTOTHROTTLE_ENABLED": True, "AUTOTHROTTLE_TARGET_CONCURRENCY": 4}, priority=prio)
        p = Politeness.from_settings(s)
        assert not p.active and (p.base.limit, p.base.delay, p.base.aimd) == (0, 0.0, False), prio


def test_waiting_granted_bounded_released_and_handed_back() -> None:
    async def main() -> None:
        s = Settings()
        s.set("CONCURRENT_REQUESTS_PER_DOMAIN", 1, priority="spider")
        ledger = Ledger()
        deferred: list[LeaseState] = []
        kicks: list[int] = []
        gate = Gate(Politeness.from_settings(s), ledger, worker_id="w", lease_seconds=30, stats=STATS, log=LOG,
                    kick=lambda: kicks.append(1), defer=lambda st, until, why: deferred.append(st),
                    unspace=lambda r: None)
        q = FakeQueue(grant=1)
        gate.queue = q  # type: ignore[assignment]
        states = [state(i) for i in range(WAITING_PER_DOMAIN + 3)]
        parked = [gate.park(st) for st in states]
        assert all(parked)
        assert deferred == states[WAITING_PER_DOMAIN + 1:]  # beyond 4 + the limit of 1: back to DELAYED
        await asyncio.sleep(0.01)
        assert [b.id for b in ledger.buffer] == ["id0"] and kicks  # granted: to the buffer's front
        assert not gate.park(ledger.buffer[0])  # a granted state passes the gate once
        assert len(ledger.waiting) == WAITING_PER_DOMAIN
        gate.done(states[0], "ok")
        gate.done(states[0], "ok")  # once
        await asyncio.sleep(0.01)
        assert [r[1] for r in q.released] == ["id0"]
        back = gate.clear()  # shutdown: every waiting lease is handed back with the buffer
        assert {s.id for s in back} == {f"id{i}" for i in range(1, WAITING_PER_DOMAIN + 1)}
        assert ledger.waiting == {} and len(confirmed_leases(back)) == WAITING_PER_DOMAIN
        await gate.close()

    asyncio.run(main())


def test_rates_count_grants_over_windows_and_fall_to_zero() -> None:
    now = [100.0]
    rates = Rates(clock=lambda: now[0])
    assert rates.rate("a.example") == 0.0  # never granted
    for _ in range(40):  # 8 grants a second for 5 s
        rates.add("a.example", 1)
        now[0] += 0.125
    assert rates.rate("a.example") == pytest.approx(8.0)
    now[0] += RATE_WINDOW  # nothing granted for a whole window: its rate reads 0
    assert rates.rate("a.example") == 0.0


def test_snapshot_shows_spacing_and_rate_per_domain() -> None:
    async def main() -> None:
        s = Settings()
        s.set("DOWNLOAD_DELAY", 0.25, priority="spider")
        gate = Gate(Politeness.from_settings(s), Ledger(), worker_id="w", lease_seconds=30, stats=STATS, log=LOG,
                    kick=lambda: None, defer=lambda st, until, why: None, unspace=lambda r: None)
        gate.queue = FakeQueue(grant=3)  # type: ignore[assignment]
        now = [0.0]
        gate.rates = Rates(clock=lambda: now[0])
        for i in range(3):
            assert gate.park(state(i))
        await asyncio.sleep(0.01)
        assert gate.crawl_delay("b.example", 2.0)
        now[0] = RATE_WINDOW
        (row,) = gate.snapshot()
        assert (row.domain, row.inflight, row.spacing) == ("a.example", 3, 0.25)
        assert row.rate == pytest.approx(3 / RATE_WINDOW)
        assert gate.spacing("b.example") == 2.0  # a robots.txt Crawl-delay above the spider's delay
        await gate.close()

    asyncio.run(main())


def test_autothrottle_delay_keys_are_named_as_ignored() -> None:
    s = Settings({"AUTOTHROTTLE_MAX_DELAY": 60.0, "AUTOTHROTTLE_START_DELAY": 5.0})  # Scrapy's defaults: silent
    s.set("AUTOTHROTTLE_ENABLED", True, priority="spider")
    s.set("AUTOTHROTTLE_TARGET_CONCURRENCY", 3, priority="spider")
    assert Politeness.from_settings(s).ignored == ()
    s.set("AUTOTHROTTLE_MAX_DELAY", 10.0, priority="spider")
    p = Politeness.from_settings(s)
    assert p.ignored == ("AUTOTHROTTLE_MAX_DELAY",)
    assert (p.base.aimd, p.base.start) == (True, 3.0)  # the window starts at the target concurrency
    with pytest.raises(PolitenessError, match="unknown key"):
        Politeness.from_settings(s, {"a.example": {"AUTOTHROTTLE_START_DELAY": 1}})


def test_autothrottle_delay_keys_of_the_project_settings_are_named_as_ignored() -> None:
    """A project's settings.py (priority 25, scraper.worker.project) is named too; Fleet's own settings module
    (20) is not: only what the user set."""
    s = Settings()
    s.set("AUTOTHROTTLE_ENABLED", True, priority=25)
    s.set("AUTOTHROTTLE_START_DELAY", 2.0, priority=25)
    s.set("AUTOTHROTTLE_DEBUG", True, priority=25)
    s.set("AUTOTHROTTLE_MAX_DELAY", 30.0, priority="project")
    p = Politeness.from_settings(s)
    assert p.ignored == ("AUTOTHROTTLE_START_DELAY", "AUTOTHROTTLE_DEBUG")
    assert p.ignored_in == {"AUTOTHROTTLE_START_DELAY": "project", "AUTOTHROTTLE_DEBUG": "project"}
    s.set("AUTOTHROTTLE_DEBUG", False, priority="spider")  # custom_settings over the project's: one entry
    assert Politeness.from_settings(s).ignored_in == {"AUTOTHROTTLE_START_DELAY": "project",
                                                      "AUTOTHROTTLE_DEBUG": "spider"}

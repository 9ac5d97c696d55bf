"""The stall watchdog's decisions (scraper/worker/watchdog.py) on a stand-in runtime and engine.

Pure unit tests: time is passed in, nothing sleeps. What counts as progress, what counts as waiting
(a download slot's queue, the scheduler), and what a stalled request gets (void, cancelled, class A with
evidence). The end-to-end case (a hung middleware and a stuck callback in a real worker) is
tests/integration/test_hostile_content.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from scrapy import Request
from scrapy.utils.test import get_crawler

from scraper.policy.taxonomy import A
from scraper.worker.ledger import VOID_KEY
from scraper.worker.robots import ROBOTS_WAIT_KEY
from scraper.worker.watchdog import Watchdog

TIMEOUT, MARGIN = 2.0, 1.0


@dataclass
class State:
    request: Request
    settled: bool = False
    claim: Any = None
    status: int | None = None
    pending: int = 0
    items: list[Any] = field(default_factory=list)
    discovered: list[Any] = field(default_factory=list)
    exhausted: bool = False
    env: Any = field(default_factory=lambda: SimpleNamespace(run="r", fp="f"))


class Runtime:
    def __init__(self) -> None:
        self.active: dict[str, State] = {}
        self.stopping = self.releasing = False
        self.fatal = None
        self.failed: list[tuple[State, Any]] = []
        self.stats = SimpleNamespace(inc_value=lambda *a, **k: None)
        self.log = SimpleNamespace(warning=lambda *a, **k: None, error=lambda *a, **k: None)

    def fail(self, state: State, verdict: Any, response: Any) -> None:
        state.settled = True
        self.failed.append((state, verdict))


class Downloader:
    def __init__(self) -> None:
        self.phases: dict[int, str] = {}
        self.cancelled: list[Request] = []

    def phase(self, request: Request) -> str:
        return self.phases.get(id(request), "out")

    def cancel(self, request: Request) -> bool:
        self.cancelled.append(request)
        return True


def _setup() -> tuple[Watchdog, Runtime, Downloader, State]:
    crawler = get_crawler(settings_dict={"DOWNLOAD_TIMEOUT": TIMEOUT})
    rt, dl = Runtime(), Downloader()
    crawler.fleet = rt  # type: ignore[attr-defined]
    crawler.engine = SimpleNamespace(downloader=dl, _slot=SimpleNamespace(  # type: ignore[assignment]
        inprogress=set(), scheduler=SimpleNamespace(direct=[])))
    state = State(Request("http://a.test/x"))
    rt.active["L1"] = state
    return Watchdog(crawler, MARGIN), rt, dl, state


def test_no_progress_past_timeout_plus_margin_is_class_a_with_evidence() -> None:
    wd, rt, dl, state = _setup()
    dl.phases[id(state.request)] = "middleware"
    assert wd.check(100.0) == []
    assert wd.check(102.9) == []  # 2.9 s: not yet past 2 + 1
    assert wd.check(103.1) == ["L1"]
    ((st, verdict),) = rt.failed
    assert st is state and (verdict.cls, verdict.reason) == (A, "watchdog:stalled")
    assert verdict.detail.startswith("phase=middleware idle_s=3.1 limit_s=3.0 status=None hops=0")
    assert state.request.meta[VOID_KEY] is True and state.request.errback is None
    assert dl.cancelled == [state.request]
    assert wd.check(200.0) == []  # settled: never again


def test_progress_restarts_the_clock() -> None:
    wd, rt, dl, state = _setup()
    dl.phases[id(state.request)] = "downloading"
    wd.check(100.0)
    state.status = 200  # the response arrived, the callback runs
    dl.phases.pop(id(state.request))
    wd.crawler.engine._slot.inprogress.add(state.request)  # type: ignore[union-attr]
    assert wd.check(102.5) == []
    state.items.append({"x": 1})  # an item came out
    assert wd.check(105.0) == []  # the clock restarted here
    assert wd.check(107.9) == []
    assert wd.check(108.1) == ["L1"]
    assert rt.failed[0][1].detail.startswith("phase=scraping")


def test_a_redirect_is_progress() -> None:
    wd, rt, dl, state = _setup()
    dl.phases[id(state.request)] = "downloading"
    wd.check(100.0)
    state.request = Request("http://a.test/y", meta={"redirect_urls": ["http://a.test/x"]})
    dl.phases[id(state.request)] = "downloading"
    assert wd.check(102.5) == []
    assert wd.check(105.6) == ["L1"]
    assert "hops=1" in rt.failed[0][1].detail


def test_waiting_for_a_slot_or_the_scheduler_is_not_a_stall() -> None:
    wd, rt, dl, state = _setup()
    dl.phases[id(state.request)] = "queued"  # DOWNLOAD_DELAY / slot concurrency
    for t in range(100, 200, 10):
        assert wd.check(float(t)) == []
    dl.phases.pop(id(state.request))
    wd.crawler.engine._slot.scheduler.direct.append(state.request)  # type: ignore[union-attr]
    for t in range(200, 300, 10):
        assert wd.check(float(t)) == []
    wd.crawler.engine._slot.scheduler.direct.clear()  # type: ignore[union-attr]
    assert wd.check(300.0) == []  # nowhere Scrapy tracks it: the clock starts now
    assert wd.check(303.1) == ["L1"]
    assert rt.failed[0][1].detail.startswith("phase=limbo")


def test_waiting_for_the_sites_robots_txt_is_not_a_stall() -> None:
    """The robots.txt fetch (FleetRobotsMiddleware) queues in the site's slot behind its Crawl-delay: a
    page waiting for it is queueing, not stalled; once robots.txt is read, its clock starts again."""
    wd, rt, dl, state = _setup()
    dl.phases[id(state.request)] = "middleware"
    state.request.meta[ROBOTS_WAIT_KEY] = True
    for t in range(100, 200, 10):
        assert wd.check(float(t)) == []
    state.request.meta.pop(ROBOTS_WAIT_KEY)
    assert wd.check(200.0) == []
    assert wd.check(203.1) == ["L1"]
    assert rt.failed[0][1].detail.startswith("phase=middleware")


def test_settled_speculative_and_shutdown_states_are_left_alone() -> None:
    wd, rt, dl, state = _setup()
    dl.phases[id(state.request)] = "middleware"
    state.claim = object()  # Redis has not confirmed the lease: the outage handling owns it
    wd.check(100.0)
    assert wd.check(200.0) == []
    state.claim = None
    rt.stopping = True  # shutdown: the grace period and the release own it
    wd.check(300.0)
    assert wd.check(400.0) == []
    assert rt.failed == []


def test_the_request_download_timeout_meta_wins() -> None:
    wd, _rt, dl, state = _setup()
    state.request.meta["download_timeout"] = 10
    dl.phases[id(state.request)] = "downloading"
    wd.check(100.0)
    assert wd.check(110.9) == []
    assert wd.check(111.1) == ["L1"]

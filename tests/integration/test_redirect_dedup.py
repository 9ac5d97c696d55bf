"""The worker's check of a redirect against the run's SEEN (scraper.worker.redirects), on a real Redis.

What matters beyond the parity test (tests/parity, the items): a redirect to a SEEN target is settled as
ignored only on a request's first delivery; a redelivery follows it, since its own earlier delivery may
have recorded that target with its children before dying (a lost request is never dropped as seen); a
dont_filter request is neither checked nor recorded; and a request settled meanwhile is left alone.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request

from scraper.infra import log
from scraper.infra.config import FleetConfig
from scraper.queue.client import Commit, FleetQueue, Lease
from scraper.queue.envelope import Envelope
from scraper.queue.fingerprint import fp64
from scraper.worker.discovery import Discovery
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.redirects import Redirects
from tests.fleetproc import fleet_json, objects, queue_session, spider_module_env, start_worker, wait_all, wait_for
from tests.parity.site import ParitySite

pytestmark = pytest.mark.integration

SPIDER = "rdtest"
BASE = "https://docs.example"


class _Stats:
    """The two calls of Scrapy's stats collector the component makes."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def inc_value(self, key: str, count: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + count

    def get_value(self, key: str) -> int | None:
        return self.values.get(key)


def _parts(q: FleetQueue) -> tuple[Redirects, Ledger, list[Any], list[str], _Stats]:
    ledger = Ledger()
    tasks: list[Any] = []
    ignored: list[str] = []
    stats = _Stats()

    def ignore(state: LeaseState, exc: BaseException) -> None:
        state.settled = True
        ignored.append(str(exc))

    rd = Redirects(ledger, Discovery(FleetConfig.from_env({}), ledger, stats, log.get_logger()), ignored=ignore,
                   spawn=lambda coro: tasks.append(asyncio.ensure_future(coro)), kick=lambda: None, stats=stats,
                   log=log.get_logger())
    rd.queue = q
    return rd, ledger, tasks, ignored, stats


def _leased(ledger: Ledger, path: str, *, deliveries: int = 1, dont_filter: bool = False) -> LeaseState:
    env = Envelope.from_request(Request(f"{BASE}{path}", dont_filter=dont_filter), spider_name=SPIDER, run="r1")
    state = LeaseState(Lease(f"id{path}", b"", deliveries, "tok"), env)
    ledger.activate(state, env.to_request(None))
    return state


def _hop(state: LeaseState, path: str) -> Request:
    assert state.request is not None
    return state.request.replace(url=f"{BASE}{path}", meta={**state.request.meta, "redirect_urls": [state.env.url]})


def test_a_redirect_to_a_seen_target_is_ignored_on_a_first_delivery_only(redis_url: str) -> None:
    async def body(q: FleetQueue, client: Any) -> None:
        rd, ledger, tasks, ignored, stats = _parts(q)
        linked = Envelope.from_request(Request(f"{BASE}/docs/"), spider_name=SPIDER, run="r1")
        await q.seed("r1", [linked])
        followed: list[str] = []

        def follow(state: LeaseState, request: Request) -> None:
            followed.append(request.url)

        first = _leased(ledger, "/docs")
        assert rd.continued(first, _hop(first, "/docs/"), follow) is True
        await asyncio.gather(*tasks)
        assert followed == [] and first.settled and len(ignored) == 1 and first.fetch.hops == []
        assert stats.get_value("fleet/redirect_filtered") == 1

        # a redelivery: its own first delivery may have recorded /docs/ with its children, then died
        again = _leased(ledger, "/docs?again", deliveries=2)
        assert rd.continued(again, _hop(again, "/docs/"), follow) is True
        assert followed == [f"{BASE}/docs/"] and not again.settled and again.fetch.hops == [linked.fp]

        # not SEEN: followed after the check, the hop remembered for the commit
        fresh = _leased(ledger, "/guide")
        assert rd.continued(fresh, _hop(fresh, "/guide/"), follow) is True
        assert followed == [f"{BASE}/docs/"]  # not yet: Redis is asked first
        await asyncio.gather(*tasks)
        assert followed[-1] == f"{BASE}/guide/" and fresh.fetch.hops == [fp64(Request(f"{BASE}/guide/"))]

        # dont_filter: neither checked nor recorded, as Scrapy's dupefilter neither checks nor records it
        df = _leased(ledger, "/docs?df", dont_filter=True)
        assert rd.continued(df, _hop(df, "/docs/"), follow) is True
        assert followed[-1] == f"{BASE}/docs/" and df.fetch.hops == [] and not df.settled
        assert len(ignored) == 1

        # settled while Redis answered (the watchdog, a shutdown): nothing more happens to it
        late = _leased(ledger, "/late")
        assert rd.continued(late, _hop(late, "/docs/"), follow) is True
        late.settled = True
        n = len(followed)
        await asyncio.gather(*tasks)
        assert len(followed) == n and len(ignored) == 1

        # the hops a commit carries make a later redirect to the same target ignored
        target = _leased(ledger, "/a")
        await q.commit([Commit(target.id, target.lease.token, "r1", target.env.fp, hops=fresh.fetch.hops)],
                       ack=False)
        other = _leased(ledger, "/b")
        rd.continued(other, _hop(other, "/guide/"), follow)
        await asyncio.gather(*tasks)
        assert other.settled and len(ignored) == 2

    queue_session(redis_url, SPIDER, body)


CRASH_SPIDER = """
    import scrapy

    class CrashRedirect(scrapy.Spider):
        name = "crash_redirect"

        def parse(self, response):
            yield {"url": response.url, "redirects": len(response.meta.get("redirect_urls", []))}
            if "/landed/" in response.url:
                yield response.follow("/item/5-5", callback=self.parse)
"""


@pytest.mark.parametrize("shards", [1, 3])
def test_a_worker_killed_after_recording_its_hops_loses_no_page(redis_url: str, tmp_path: Path, shards: int) -> None:
    """A worker follows a redirect and queues the landed page's child (the COMMIT that records the hops in
    SEEN), but cannot write the object (its store is a file, not a directory: the request is held, never
    DONE) and is SIGKILLed. The next worker leases the request again: its hops are SEEN, by its own dead
    delivery, and it follows them anyway, so the page is stored and nothing is dropped as seen. Sharded
    (FLEET_QUEUE_SHARDS=3), the hops are recorded in their shards once the request's own has counted them."""
    from scraper.queue.shards import open_queue

    site = ParitySite().start()
    try:
        env = spider_module_env(redis_url, tmp_path, "crash_redirect_spiders", CRASH_SPIDER,
                                FLEET_LEASE_SECONDS="1", FLEET_LOG_FORMAT="json", FLEET_QUEUE_SHARDS=str(shards))
        start = f"{site.base}/redirect/2?to=crash"
        fleet_json("seed", "crash_redirect", "--run", "r1", "--url", start, env=env)
        blocked = tmp_path / "not-a-dir"
        blocked.write_text("")
        first = start_worker("crash_redirect", {**env, "FLEET_STORE": f"file://{blocked}"}, tmp_path / "w1.log")
        landed = fp64(Request(f"{site.base}/landed/crash"))

        async def state(_q: FleetQueue, client: Any) -> tuple[list[bool], dict[str, dict[str, int]]]:
            q = await open_queue(client, "crash_redirect")  # as many shards as Redis records
            return await q.seen("r1", [landed]), await q.runs()

        try:
            assert wait_for(lambda: queue_session(redis_url, "crash_redirect", state)[0] == [True], 30, 0.05), \
                (tmp_path / "w1.log").read_text()[-3000:]
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert queue_session(redis_url, "crash_redirect", state)[1]["r1"]["done"] == 2  # the hops, not the request
        log = tmp_path / "w2.log"
        assert wait_all([start_worker("crash_redirect", env, log, "--until-idle", "3")], 60) == [0]
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        dropped = [e for e in events if e.get("event") in ("redirect_filtered", "request_ignored")]
        assert not dropped, dropped
        items = {i["url"]: i["redirects"] for rows in objects(tmp_path / "data", "items", "crash_redirect", "r1").values()
                 for i in rows}
        assert items == {f"{site.base}/item/5-5": 0, f"{site.base}/landed/crash": 2}, items
        status = fleet_json("status", "crash_redirect", "--json", env=env)["crash_redirect"]
        assert status["runs"]["r1"] == {"seen": 4, "done": 4}, status  # the start, 2 hops, the child
        assert status["dlq"] == 0, status
    finally:
        site.stop()

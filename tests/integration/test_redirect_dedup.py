"""The worker's check of a redirect against the run's SEEN (scraper.worker.redirects), on a real Redis.

What matters beyond the parity test (tests/parity, the items): a redirect to a SEEN target is settled as
ignored only on a request's first delivery; a redelivery follows it, since its own earlier delivery may
have recorded that target with its children before dying (a lost request is never dropped as seen); a
dont_filter request is neither checked nor recorded; and a request settled meanwhile is left alone.
"""

from __future__ import annotations

import asyncio
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
from tests.fleetproc import queue_session

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

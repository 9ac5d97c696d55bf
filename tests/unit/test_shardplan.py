"""scraper.queue.shardplan without Redis: a caller-chosen child id must route to its fingerprint's shard."""

from __future__ import annotations

import pytest
from scrapy import Request

from scraper.queue.envelope import Envelope
from scraper.queue.keys import QueueError, new_id, shard_of
from scraper.queue.records import Commit
from scraper.queue.shardplan import plan_commits


def _kids(n: int) -> list[Envelope]:
    return [Envelope.from_request(Request(f"https://x.example/{i}"), spider_name="s", run="r") for i in range(n)]


def test_children_go_to_their_fingerprints_shards_with_ids_that_route_there() -> None:
    kids = _kids(12)
    c = Commit("0123456789ab" + "0000", "t", "r", "f" * 16, kids, ids=[new_id(e.fp) for e in kids])
    plan = plan_commits([c], 3)
    for s, entries in enumerate(plan.early):
        for e in entries:
            assert all(shard_of(x.fp, 3) == s for x in e.discovered)
            assert all(shard_of(i, 3) == s for i in e.ids)
    assert sum(len(e.discovered) for es in plan.early for e in es) == 12


def test_a_child_id_outside_its_fingerprints_shard_is_refused() -> None:
    """Such a child is queued in its fingerprint's shard but acked where its id routes: it would stay in
    flight and be fetched again at every lease expiry (seen in the bench's simulator, ids from new_id())."""
    kids = _kids(12)
    ids = [new_id(e.fp) for e in kids]
    j = next(i for i, e in enumerate(kids) if shard_of(e.fp, 3) != 0)
    ids[j] = ids[j][:12] + "0000"  # shard 0 of 3
    with pytest.raises(QueueError, match="shard of its fingerprint"):
        plan_commits([Commit("0123456789ab0000", "t", "r", "f" * 16, kids, ids=ids)], 3)

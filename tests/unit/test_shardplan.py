"""How a commit batch splits over a spider's shards (scraper/queue/shardplan.py), without Redis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scrapy import Request

from scraper.queue.envelope import Envelope
from scraper.queue.keys import QueueError, new_id, shard_of, shard_tag
from scraper.queue.records import Commit, CommitReply
from scraper.queue.shardplan import merge_replies, plan_commits

RUN = "r1"


def _env(path: str) -> Envelope:
    return Envelope.from_request(Request(f"https://shop.example/{path}"), spider_name="sp", run=RUN)


@st.composite
def _commits(draw: st.DrawFn) -> list[Commit]:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        parent = _env(f"p{draw(st.integers(0, 10_000))}")
        kids = [_env(f"k{draw(st.integers(0, 40))}") for _ in range(draw(st.integers(0, 5)))]
        hops = [_env(f"h{draw(st.integers(0, 40))}").fp for _ in range(draw(st.integers(0, 3)))]
        done = draw(st.booleans())
        strict = draw(st.booleans()) and not kids
        out.append(Commit(new_id(parent.fp), "w#1#n0", RUN, parent.fp, kids, domain="shop.example",
                          outcome=draw(st.sampled_from(("o", "n", "h", ""))), done=done,
                          claim=draw(st.integers(0, len(kids))), hops=hops, strict=strict,
                          ids=[new_id(k.fp) for k in kids]))
    return out


def test_an_id_ends_like_its_fingerprint_so_both_name_one_shard() -> None:
    for i in range(200):
        env = _env(f"x{i}")
        for n in (1, 2, 3, 7, 64):
            assert shard_of(new_id(env.fp), n) == shard_of(env.fp, n)
    assert shard_of("not-hex", 3) == 0 and shard_of("", 3) == 0


def test_shard_tags_are_distinct_and_spread_over_the_slot_ranges() -> None:
    from redis.crc import key_slot

    for spider in ("demo_shop", "a", "books.toscrape"):
        for n in (2, 3, 5):
            tags = [shard_tag(spider, i, n) for i in range(n)]
            assert tags[0] == spider and len(set(tags)) == n
            thirds = sorted(key_slot(t.encode()) * n // 16384 for t in tags)
            assert thirds == list(range(n)), (spider, n, tags)


@settings(max_examples=150, deadline=None)
@given(_commits(), st.sampled_from((2, 3, 4)))
def test_every_child_and_hop_goes_once_to_its_own_shard(commits: list[Commit], n: int) -> None:
    plan = plan_commits(commits, n)
    for ci, c in enumerate(commits):
        home = shard_of(c.lease_id, n)
        early = [(s, plan.early[s][i]) for s, final, i in plan.where[ci] if not final]
        finals = [(s, plan.final[s][i]) for s, final, i in plan.where[ci] if final]
        # children: each exactly once, in its fingerprint's shard, before any ack (wave 1), in order
        placed = [(s, e.fp) for s, part in early for e in part.discovered]
        assert sorted(placed) == sorted((shard_of(e.fp, n), e.fp) for e in c.discovered)
        for s, part in early:
            assert not part.done and all(shard_of(e.fp, n) == s for e in part.discovered)
            assert [e.fp for e in part.discovered] == [e.fp for e in c.discovered if shard_of(e.fp, n) == s]
        # DONE + ack: once, in the parent's shard, only for a done commit
        assert [s for s, _ in finals] == ([home] if c.done else [])
        # hops: a strict commit's own-shard hops with its DONE, the others after its ack; else with the children
        strict = c.strict and c.done
        late = [(s, h) for cj, s, part in plan.late if cj == ci for h in part.hops]
        hop_places = [(s, h) for s, part in early for h in part.hops] + \
                     [(s, h) for s, part in finals for h in part.hops] + late
        assert sorted(hop_places) == sorted((shard_of(h, n), h) for h in c.hops)
        if strict:
            assert all(s != home for s, _ in late)
            assert not [h for _, part in early for h in part.hops]
        # a children commit's hops (outcome 'h'): first an empty mark in the parent's own shard (wave 0), and
        # in wave 1 only where the mark said they count (lua/commit.lua: a lease is volatile)
        if not c.done and c.outcome == "h":
            assert plan.mark_of[ci] is not None
            ms, mi = plan.mark_of[ci]
            mark = plan.marks[ms][mi]
            assert ms == home and mark.outcome == "h" and not mark.hops and not mark.discovered
            assert (mark.lease_id, mark.token, mark.done) == (c.lease_id, c.token, False)
        else:
            assert plan.mark_of[ci] is None
        assert all(part.outcome == "" for _, part in early)
        # the claim goes with the claimed child
        if c.claim:
            slot = plan.claimed_in[ci]
            assert slot is not None and not slot[1]
            part = plan.early[slot[0]][slot[2]]
            assert part.discovered[part.claim - 1] is c.discovered[c.claim - 1]
        else:
            assert plan.claimed_in[ci] is None


@settings(max_examples=100, deadline=None)
@given(_commits(), st.sampled_from((2, 3)))
def test_replies_merge_per_commit(commits: list[Commit], n: int) -> None:
    """Each shard answers one queued child per child and acks every DONE: the merged reply counts every
    child once, acks exactly the done commits, and takes the claim from the claimed child's entry."""
    plan = plan_commits(commits, n)

    def answer(parts: list[Commit]) -> CommitReply | None:
        if not parts:
            return None
        return CommitReply([len(p.discovered) for p in parts], [], [p.done for p in parts],
                           [(f"tok{p.claim}", 1) if p.claim else ("", 0) for p in parts])

    reply = merge_replies(plan, [answer(p) for p in plan.early], [answer(p) for p in plan.final])
    assert reply.enqueued == [len(c.discovered) for c in commits]
    assert reply.acked == [c.done for c in commits]
    assert [bool(t) for t, _ in reply.claims] == [bool(c.claim) for c in commits]
    assert plan.late_wave([False] * len(commits)) == [[] for _ in range(n)]


@settings(max_examples=100, deadline=None)
@given(_commits(), st.sampled_from((2, 3)), st.data())
def test_hops_of_a_mark_that_did_not_count_stay_home(commits: list[Commit], n: int, data: st.DataObject) -> None:
    """Wave 1 drops a marked commit's hops in every shard when its mark answered 0 (the lease had moved
    on), and changes nothing else."""
    plan = plan_commits(commits, n)
    counts = {ci: data.draw(st.booleans()) for ci, at in enumerate(plan.mark_of) if at is not None}
    replies: list[CommitReply | None] = [None] * n
    for s, parts in enumerate(plan.marks):
        if parts:
            oks = [counts[ci] for ci, at in enumerate(plan.mark_of) if at is not None and at[0] == s]
            replies[s] = CommitReply([0] * len(parts), [], oks, [("", 0)] * len(parts))
    early = plan.early_wave(replies)
    for ci in range(len(commits)):
        for s, final, i in plan.where[ci]:
            if not final:
                want = [] if not counts.get(ci, True) else plan.early[s][i].hops
                assert early[s][i].hops == want
                assert early[s][i].discovered == plan.early[s][i].discovered


def test_a_routed_parent_is_marked_in_its_own_shard_of_an_earlier_count() -> None:
    """A request leased from a shard of an earlier count (``route``, index >= the shards of now): its mark
    goes there, where its lease is."""
    c = Commit("0123456789ab0001", "t", RUN, "f" * 16, [], done=False, outcome="h", hops=[_env("h1").fp])
    plan = plan_commits([c], 2, route={c.lease_id: (3, "x")}, width=4)
    assert plan.mark_of == [(3, 0)] and plan.marks[3][0].outcome == "h"


def test_a_child_id_outside_its_fingerprints_shard_is_refused() -> None:
    """Such a child is queued in its fingerprint's shard but acked where its id routes: it would stay in
    flight and be fetched again at every lease expiry (seen in the bench's simulator, ids from new_id())."""
    kids = [_env(f"k{i}") for i in range(12)]
    ids = [new_id(e.fp) for e in kids]
    j = next(i for i, e in enumerate(kids) if shard_of(e.fp, 3) != 0)
    ids[j] = ids[j][:12] + "0000"  # shard 0 of 3
    with pytest.raises(QueueError, match="fingerprint's shard"):
        plan_commits([Commit("0123456789ab0000", "t", RUN, "f" * 16, kids, ids=ids)], 3)

"""How a batch of commits splits over a spider's shards, and how the shards' replies make the batch's reply:
pure functions, so the routing is tested without Redis (scraper.queue.shards runs the calls).

A commit's parent lives in the shard of its lease id (``keys.shard_of``), each child in its fingerprint's,
each redirect hop in its own. The plan has up to four waves, run in order, each one call per shard that has
work:

0. ``marks``: for a request's children commit with outcome 'h' (not done; the worker's, when the fetch
   followed redirects), an empty 'h' entry in the request's shard, which marks the request delivered
   while its lease is still the sender's (lua/commit.lua; a lease is volatile, docs/architecture.md) and
   answers whether its hops count: wave 1 sends them only then (``early_wave``), as one shard records
   them only then.
1. ``early``: children-only entries (``done=False``), one per commit and shard, with the commit's children
   and redirect hops that live in that shard, in commit order: everything a batch queues is queued
   before anything is acknowledged (a crash never loses a child), and within a shard the children and
   hops meet SEEN in the order the one-shard COMMIT would check them.
2. ``final``: each commit's DONE, breaker outcome and ack in its parent's shard.
3. ``late``: the other shards' hops of a *strict* commit (an ignored request's ack, whose hops count only
   while the lease was this worker's): sent only for the commits wave 2 acknowledged. A strict commit's
   hops in its own shard go with its DONE in wave 2, as in one shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from scraper.queue.keys import QueueError, shard_of
from scraper.queue.records import Commit, CommitReply

__all__ = ["CommitPlan", "Slot", "merge_replies", "plan_commits"]

Slot = tuple[int, bool, int]  # (shard, in the final wave?, index of the entry in that shard's list)


@dataclass
class CommitPlan:
    shards: int
    early: list[list[Commit]]
    final: list[list[Commit]]
    late: list[tuple[int, int, Commit]] = field(default_factory=list)  # (commit, shard, hops-only entry)
    where: list[list[Slot]] = field(default_factory=list)  # per commit: its entries
    claimed_in: list[Slot | None] = field(default_factory=list)  # per commit: the entry with its claim
    marks: list[list[Commit]] = field(default_factory=list)  # wave 0, per shard
    mark_of: list[tuple[int, int] | None] = field(default_factory=list)  # per commit: its mark (shard, index)

    def early_wave(self, marks: list[CommitReply | None]) -> list[list[Commit]]:
        """Wave 1's entries per shard, given wave 0's replies: a marked commit's hops only where its mark
        answered that they count (the lease was still the sender's)."""
        void: set[int] = set()
        for ci, at in enumerate(self.mark_of):
            if at is not None:
                rep = marks[at[0]]
                if rep is None:
                    raise AssertionError(f"no reply from shard {at[0]} for a planned mark")
                if not rep.acked[at[1]]:
                    void.add(ci)
        if not void:
            return self.early
        early = [list(lists) for lists in self.early]
        for ci in void:
            for s, is_final, idx in self.where[ci]:
                if not is_final:
                    early[s][idx] = replace(early[s][idx], hops=[])
        return early

    def late_wave(self, acked: list[bool]) -> list[list[Commit]]:
        """Wave 3's entries per shard: the strict commits' other-shard hops, for the commits acknowledged."""
        return [[c for ci, s, c in self.late if s == shard and acked[ci]] for shard in range(self.shards)]


def plan_commits(commits: list[Commit] | tuple[Commit, ...], shards: int,
                 route: Mapping[str, tuple[int, str]] | None = None, width: int = 0) -> CommitPlan:
    """Split ``commits`` over ``shards`` shards (module doc). ``route``: lease id -> shard for a parent that
    is not in its id's shard (``ShardedQueue.shard``: an index up to ``width``, which counts the shards of
    earlier counts too; the children always go to the ``shards`` of now)."""
    k = shards
    total = max(k, width)
    plan = CommitPlan(total, [[] for _ in range(total)], [[] for _ in range(total)],
                      marks=[[] for _ in range(total)])
    for ci, c in enumerate(commits):
        routed = route.get(c.lease_id) if route else None
        home = routed[0] if routed is not None else shard_of(c.lease_id, k)
        strict = c.strict and c.done  # as FleetQueue sends it: a children-only entry is never strict
        kids: list[list[int]] = [[] for _ in range(k)]
        for j, env in enumerate(c.discovered):
            kids[shard_of(env.fp, k)].append(j)
        hops: list[list[str]] = [[] for _ in range(k)]
        for h in c.hops:
            hops[shard_of(h, k)].append(h)
        ids = c.ids if len(c.ids) == len(c.discovered) else []
        for cid, env in zip(ids, c.discovered, strict=False):
            if shard_of(cid, k) != shard_of(env.fp, k):
                raise QueueError(f"queue id {cid!r} is not of its fingerprint's shard: make it with keys.new_id(fp)")
        slots: list[Slot] = []
        claimed: Slot | None = None
        mark: tuple[int, int] | None = None
        if not c.done and c.outcome == "h":  # wave 0 (module doc)
            mark = (home, len(plan.marks[home]))
            plan.marks[home].append(Commit(lease_id=c.lease_id, token=c.token, run=c.run, fp=c.fp, done=False,
                                           outcome="h"))
        for s in range(k):
            mine = [] if strict else hops[s]
            if kids[s] or mine:
                claim = kids[s].index(c.claim - 1) + 1 if c.claim and c.claim - 1 in kids[s] else 0
                slot: Slot = (s, False, len(plan.early[s]))
                plan.early[s].append(Commit(
                    lease_id=c.lease_id, token=c.token, run=c.run, fp=c.fp, done=False,
                    discovered=[c.discovered[j] for j in kids[s]],
                    ids=[ids[j] for j in kids[s]] if ids else [],
                    claim=claim, hops=mine,
                ))
                slots.append(slot)
                if claim:
                    claimed = slot
            if strict and hops[s] and s != home:
                plan.late.append((ci, s, Commit(lease_id=c.lease_id, token=c.token, run=c.run, fp=c.fp,
                                                done=False, hops=hops[s])))
        if c.done:
            slot = (home, True, len(plan.final[home]))
            plan.final[home].append(Commit(
                lease_id=c.lease_id, token=c.token, run=c.run, fp=c.fp, domain=c.domain, outcome=c.outcome,
                strict=strict, hops=hops[home] if strict and home < k else [],
            ))
            slots.append(slot)
        plan.where.append(slots)
        plan.claimed_in.append(claimed)
        plan.mark_of.append(mark)
    return plan


def merge_replies(plan: CommitPlan, early: list[CommitReply | None], final: list[CommitReply | None]) -> CommitReply:
    """The batch's reply from waves 1 and 2: per commit, its children queued in every shard, its ack and
    breaker events from its own shard, and its claim from the shard of the claimed child (("", 0), as
    one shard answers, when it claimed none)."""
    n = len(plan.where)
    enq = [0] * n
    acked = [False] * n
    claims: list[tuple[str, int]] = [("", 0)] * n
    for ci, slots in enumerate(plan.where):
        for slot in slots:
            s, is_final, idx = slot
            rep = (final if is_final else early)[s]
            if rep is None:
                raise AssertionError(f"no reply from shard {s} for a planned entry")
            enq[ci] += rep.enqueued[idx]
            if is_final:
                acked[ci] = rep.acked[idx]
            if plan.claimed_in[ci] == slot:
                claims[ci] = rep.claims[idx]
    events = [e for rep in final if rep is not None for e in rep.events]
    return CommitReply(enq, events, acked, claims)

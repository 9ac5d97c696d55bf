"""What the queue scripts take and answer: leases, lease batches, commits and their replies, breaker
parameters. Plain records, so the worker's components and their tests build them without Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from scraper.queue.envelope import Envelope

__all__ = ["BreakerParams", "Commit", "CommitReply", "Lease", "LeaseBatch"]

@dataclass
class Lease:
    id: str
    raw: bytes
    deliveries: int
    token: str


@dataclass
class LeaseBatch:
    promoted: int = 0
    reaped: list[tuple[str, str]] = field(default_factory=list)
    leased: list[Lease] = field(default_factory=list)
    skipped: list[tuple[str, bytes]] = field(default_factory=list)
    held: int = 0
    parked: int = 0
    remaining: int = 0  # READY's size after this lease
    cancelled: int = 0  # entries of cancelled runs dropped unexecuted


@dataclass(slots=True)
class Commit:
    """What one finished request leaves behind: DONE for its fingerprint, then its children."""

    lease_id: str
    token: str
    run: str
    fp: str
    discovered: list[Envelope] = field(default_factory=list)
    domain: str = ""
    # breaker outcome: 'o' item page fine, 'n' navigation page, '' untracked; on a children commit
    # (done=False), 'h': of a request still in flight, whose hops count only while its lease is the sender's
    # (lua/commit.lua; its final commit brings them again)
    outcome: str = ""
    done: bool = True  # False: only enqueue the children (early, before the parent's writes)
    claim: int = 0  # 1-based index of a child to lease to this worker at once (0: none); see COMMIT
    ids: list[str] = field(default_factory=list)  # queue ids of the children, chosen by the caller (or new)
    # fingerprints of the redirect hops it followed, recorded SEEN (and DONE) with its own DONE: a later link
    # to a redirect's target is dropped, as Scrapy's dupefilter drops it (lua/commit.lua)
    hops: list[str] = field(default_factory=list)
    # DONE (and the hops) only if the lease is still this worker's: an ignored request's acknowledgement, whose
    # reason another delivery may have changed (a redirect hop found SEEN), so a stale one must not mark it DONE
    strict: bool = False


class CommitReply(NamedTuple):
    """What the COMMIT script answered, one entry per commit of the batch."""

    enqueued: list[int]
    events: list[tuple[str, str]]  # breaker events (domain, event)
    # the lease acknowledged (a done commit). A children commit's flag is False, but for FleetQueue's answer
    # to one with outcome 'h': its hops counted (ShardedQueue reads it in wave 0, shardplan)
    acked: list[bool]
    claims: list[tuple[str, int]]  # (token, deliveries) of the claimed child; ("", 0) not queued, ("", -1) gated


@dataclass(frozen=True)
class BreakerParams:
    """Rate-based drift breaker: opens on >= min_events C outcomes and C rate >= rate over window."""

    window: int = 20
    min_events: int = 5
    rate: float = 0.5
    cooldown: float = 1800.0
    cooldown_cap: float = 8 * 3600.0

    def args(self) -> list[str]:
        return [str(self.window), str(self.min_events), repr(self.rate), repr(self.cooldown), repr(self.cooldown_cap)]


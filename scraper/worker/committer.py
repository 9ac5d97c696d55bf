"""The committer: children first, then DONE + ack, in batches, with a nonce that survives a retry.

Ordering rules it keeps (tests/unit/test_core_committer.py):

* a parent's children are queued (a COMMIT of their own, ``done=False``, sent as soon as the callback
  finished) before the parent's DONE + ack: a parent is never acknowledged before its children are
  in Redis; the parent's commit is only built once its objects are durable *and* its children queued;
* a speculative child's claim is answered (confirmed or void) by that same children COMMIT, before
  anything of the child's fetch settles;
* DONE + ack of finished requests share one Redis call per batch (FLEET_COMMIT_BATCH, or every
  FLEET_COMMIT_INTERVAL): acks are on no critical path; children, which are, never wait for a batch.

A batch whose reply was lost is sent again with the same nonce, so a child claimed by the lost call is
recognised as ours instead of SEEN.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scraper.infra.config import FleetConfig
from scraper.queue.client import Commit
from scraper.worker.breakers import Breakers
from scraper.worker.health import REDIS_ERRORS, Health
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.queueport import QueuePort

__all__ = ["Committer", "Flags"]

#: Children of one page per COMMIT call. Each child is 5 of the call's arguments and Redis refuses a command of
#: more than 1,048,576 (it closes the connection: "invalid multibulk length"), which Fleet took for an outage
#: and retried for ever, rebuilding the arguments each time, while the worker's memory grew (a hostile probe's
#: page of 215,000 links). 10,000 children are ~2 MB of envelopes a call.
CHILDREN_PER_CALL = 10_000


class Flags:
    """The worker's lifecycle flags, shared by its components: ``stopping`` (no more leasing) and
    ``releasing`` (closing: unfinished work is released, never failed or retried)."""

    __slots__ = ("grace_deadline", "releasing", "stopping")

    def __init__(self) -> None:
        self.stopping = False
        self.releasing = False
        self.grace_deadline: float | None = None


class Committer:
    def __init__(self, config: FleetConfig, worker_id: str, ledger: Ledger, health: Health, flags: Flags,
                 breakers: Breakers, stats: Any, log: Any, news: Callable[[], None], kick: Callable[[], None],
                 outcome: Callable[[LeaseState], str]) -> None:
        self.config = config
        self.worker_id = worker_id
        self.ledger = ledger
        self.health = health
        self.flags = flags
        self.breakers = breakers
        self.stats = stats
        self.log = log
        self.news = news  # new work may be in READY: wake the feeder
        self.kick = kick  # the engine may have work: schedule its next turn
        # a finished request's drift-breaker outcome ('o' item page, 'n' navigation, '' untracked)
        self.outcome = outcome
        self.queue: QueuePort | None = None  # set when the spider opens
        # answers a speculative child's claim: (child state, token, deliveries); set by the feeder
        self.claim_answered: Callable[[LeaseState, str, int], None] = lambda spec, token, deliveries: None
        self.commits: list[tuple[LeaseState, Commit]] = []
        self.wake = asyncio.Event()
        # seconds each COMMIT call took, retries included (the worker metrics' histogram; None: not measured)
        self.timed: Callable[[float], None] | None = None
        # records this worker's store for a run it committed (scraper.queue.storebind.recorder); set when open
        self.record: Callable[[str], Awaitable[None]] | None = None

    # -- what gets committed ----------------------------------------------------------------------

    def written(self, state: LeaseState, outcome: str) -> None:
        """Objects are durable (or there were none): the request may be marked DONE and acknowledged
        (once its children, if any, are queued). ``outcome`` is its drift-breaker outcome."""
        progress = state.progress
        progress.written = True
        if progress.children_pending:
            return
        env = state.env
        self.commits.append((state, Commit(state.id, state.lease.token, env.run, env.fp,
                                           domain=env.domain, outcome=outcome, hops=state.fetch.hops)))
        if len(self.commits) >= self.config.commit_batch:
            self.wake.set()

    def ack_only(self, state: LeaseState) -> None:
        """Acknowledge a request that leaves nothing behind (ignored: offsite, a redirect hop already SEEN,
        a middleware's IgnoreRequest), soon; the redirect hops it followed before it was ignored are recorded
        SEEN with it, as Scrapy records them. Strict (records.Commit.strict): with nothing written, a
        delivery that lost its lease has nothing to record, and its reason may be stale (a hop found SEEN
        may be the one its own redelivery recorded), so DONE only while the lease is still its own."""
        self.commits.append((state, Commit(state.id, state.lease.token, state.env.run, state.env.fp,
                                           hops=state.fetch.hops, strict=True)))
        self.wake.set()

    async def queue_children(self, state: LeaseState, void: Callable[[LeaseState], None]) -> None:
        """The children COMMIT (``done=False``), claiming the speculative child if there is one; a page of more
        than CHILDREN_PER_CALL children in one such call per CHILDREN_PER_CALL, one after another (see there),
        the redirect hops with the first, the claim with the one holding its child."""
        env, out, progress = state.env, state.out, state.progress
        spec = progress.spec
        claim = progress.spec_index if spec is not None else 0
        found, ids = out.discovered, out.discovered_ids
        progress.enqueued = 0  # the calls' counts add up (commit_batch)
        try:
            for start in range(0, max(1, len(found)), CHILDREN_PER_CALL):
                end = start + CHILDREN_PER_CALL
                first = start == 0
                commit = Commit(state.id, state.lease.token, env.run, env.fp, found[start:end], done=False,
                                claim=claim - start if start < claim <= end else 0, ids=ids[start:end],
                                hops=state.fetch.hops if first else [],
                                outcome="h" if first and state.fetch.hops else "")
                await self.commit_batch([(state, commit)], partial=end < len(found))
                if self.health.fatal or self.flags.releasing:
                    # no more calls: the lease goes back (or expires) and the redelivery sends every child again
                    # (SEEN makes that a no-op for those already queued); the finally voids the speculative child
                    break
        finally:
            if spec is not None and spec.claim is not None and not spec.claim.done():
                void(spec)  # no answer from Redis (fatal outage, shutdown)

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.flags.releasing:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.config.commit_interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            if self.commits:
                await self.flush()

    async def flush(self) -> None:
        n = self.config.commit_batch
        batch, self.commits = self.commits[:n], self.commits[n:]
        await self.commit_batch(batch)

    async def commit_batch(self, batch: list[tuple[LeaseState, Commit]], *, partial: bool = False) -> None:
        """One COMMIT call for ``batch``, retried through Redis outages. ``partial``: a children commit of a page
        whose other children follow in further calls (queue_children): the parent's own commit waits for the last."""
        queue = self.queue
        assert queue is not None
        nonce = secrets.token_hex(4)  # the same on a retry: a claim whose reply was lost is recognised
        retried = False
        commits = [c for _, c in batch]
        if self.record is not None:  # what it wrote is in this worker's store: Redis says so (storebind)
            for run in {c.run for c in commits if c.done and not c.strict}:  # DONE after durable objects only
                await self.record(run)
        started = time.perf_counter()
        while True:
            try:
                enq, events, acked, claims = await queue.commit_claiming(
                    commits, worker=self.worker_id, lease_seconds=self.config.lease_seconds, nonce=nonce)
                self.health.redis_ok()
                if self.timed is not None:
                    self.timed(time.perf_counter() - started)
                break
            except REDIS_ERRORS as exc:
                await self.health.redis_trouble(exc)
                retried = True
                if self.health.fatal:
                    # leave them: the leases expire and another worker redoes them idempotently
                    for st, _ in batch:
                        self.ledger.active.pop(st.id, None)
                    return
        woke = False
        active = self.ledger.active
        for (st, c), n, ok, (ctoken, cdlv) in zip(batch, enq, acked, claims, strict=True):
            progress = st.progress
            if c.claim and progress.spec is not None:
                self.claim_answered(progress.spec, ctoken, cdlv)
                # the parent no longer needs its claimed child: without this, page N's state held page
                # N+1's, which held N+2's... and a pagination chain kept every list page's state (and
                # its 20-odd discovered envelopes) alive as long as the chain's first page was
                progress.spec = None
            # new work in READY for our feeder: children beyond the one this call leased to us; after a
            # retry the count is 0 (the first, lost, call queued them), so any children count
            if n > (1 if ctoken else 0) or (retried and c.discovered):
                woke = True
            if n:
                self.stats.inc_value("fleet/enqueued", n)
            if not c.done:
                progress.enqueued += n
                if partial:
                    continue
                progress.children_pending = False
                if progress.written and not self.flags.releasing:
                    self.written(st, self.outcome(st))  # its objects were durable first: DONE + ack now
                continue
            if active.get(st.id) is st:
                active.pop(st.id, None)
            if ok:
                self.stats.inc_value("fleet/acked")
                self.log.info(
                    "request_acked", run=c.run, fp=c.fp, attempt=st.lease.deliveries,
                    items=len(st.out.items), discovered=len(st.out.discovered), enqueued=progress.enqueued,
                )
            else:
                # the lease moved on (expired and re-leased); DONE is recorded, so the redelivery
                # is acknowledged without a fetch
                self.stats.inc_value("fleet/ack_lost")
                self.log.warning("ack_lost", run=c.run, fp=c.fp, lease=c.lease_id, attempt=st.lease.deliveries)
        if woke or any(event == "closed" for _, event in events):  # a closed breaker's parked work is back
            self.news()
        for domain, event in events:
            self.breakers.event(domain, event, {})
        if self.commits:
            self.wake.set()
        self.kick()

"""Settlement of a finished request: the ok path to durable objects and the commit, and what a failed
object write means (the object's fault: retry on A; the store's: hold until it is back).

Why apart from the facade: this is the one place that decides, for a request whose callback and items
are done, in which order its children, objects and DONE + ack go (children first, in a call of their
own; DONE + ack only after the sink said durable and the children are queued).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from scraper.infra.config import FleetConfig
from scraper.policy import drift
from scraper.policy.taxonomy import OK, A, D, Verdict
from scraper.store import health as storehealth
from scraper.store.backends import InvalidKeyError
from scraper.store.objects import ItemEncodeError, WriteContext
from scraper.worker.committer import Committer, Flags
from scraper.worker.failures import FailureApplier, now_iso
from scraper.worker.feeder import Speculation
from scraper.worker.health import Health
from scraper.worker.identity import item_key_of, spider_version
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.sinks import Durability, WriteResult
from scraper.worker.tally import RunTally

__all__ = ["Finisher"]


class Finisher:
    def __init__(self, config: FleetConfig, ledger: Ledger, health: Health, flags: Flags, committer: Committer,
                 failures: FailureApplier, speculation: Speculation, *, spider: Callable[[], Any],
                 cap: Callable[[], int], probe: Callable[[], Awaitable[None]], spawn: Callable[[Any], None],
                 stats: Any, log: Any, worker_id: str) -> None:
        self.config = config
        self.worker_id = worker_id
        self.ledger = ledger
        self.health = health
        self.flags = flags
        self.committer = committer
        self.failures = failures
        self.speculation = speculation
        self.spider = spider  # the open spider (its drift declarations)
        self.cap = cap  # how many requests the worker may hold (no speculation beyond)
        self.probe = probe  # one probe write to the store
        self.spawn = spawn
        self.stats = stats
        self.log = log
        self.durability: Durability | None = None  # set by the runtime (it answers objects_answered)
        self.tally = RunTally()  # per-run items, coverage and schema for the manifest; the keeper flushes it
        # True for a request of a cancelled run, which is then acknowledged unwritten (scraper.worker.cancels)
        self.dropped: Callable[[LeaseState], bool] = lambda state: False

    def ctx(self, state: LeaseState) -> WriteContext:
        """What the object records about its request (each item's ``_meta``)."""
        env = state.env
        fetch = state.fetch
        return WriteContext(
            spider=env.spider,
            spider_version=spider_version(self.spider()),
            run=env.run,
            fp=env.fp,
            url=env.url,
            worker_id=self.worker_id,
            attempt=state.lease.deliveries,
            attempts=dict(env.attempts),
            proxy_id=fetch.proxy_id,
            fetched_at=fetch.fetched_at or now_iso(),
            item_key=item_key_of(self.spider()),
        )

    def callback_failed(self, state: LeaseState, exc: BaseException) -> None:
        """The callback raised (the request is already marked settled)."""
        if drift.is_item_callback(self.spider(), state.env.callback):
            # an item callback that crashes on a 200 page is the classic symptom of layout drift
            self.spawn(self.failures.drift(state, f"callback_error:{type(exc).__name__}", ()))
            return
        self.stats.inc_value(f"fleet/class/{D}")
        self.stats.inc_value(f"fleet/outcome/{D}/callback_error:{type(exc).__name__}")
        self.spawn(self.failures.dead(state, f"callback_error:{type(exc).__name__}", str(exc)[:500]))

    def outcome(self, state: LeaseState) -> str:
        """The request's drift-breaker outcome: 'o' item page, 'n' navigation page, '' untracked."""
        spider = self.spider()
        if not drift.tracks_drift(spider):
            return ""
        if not _success(state):
            return "n"  # a non-2xx status the spider handles says nothing about the site's markup
        return "o" if drift.is_item_callback(spider, state.env.callback) or state.out.items else "n"

    def finish(self, state: LeaseState) -> None:
        """The callback and every item are done: queue the objects for the sink (or commit at once)."""
        out, progress = state.out, state.progress
        if self.dropped(state):
            return
        if out.errors:
            self.stats.inc_value(f"fleet/class/{D}")
            self.stats.inc_value(f"fleet/outcome/{D}/pipeline_error")
            self.spawn(self.failures.dead(state, "pipeline_error", "; ".join(out.errors)[:500]))
            return
        # Drift is judged on 2xx pages only: a 404 the spider handles (handle_httpstatus_list) that yields
        # nothing is a removed product, not a markup change, and must not open the domain's breaker.
        verdict = drift.check(self.spider(), state.env.callback, out.items) if _success(state) else None
        if verdict is not None:
            self.spawn(self.failures.drift(state, verdict.reason, verdict.missing))
            return
        self.stats.inc_value("fleet/outcome/ok/ok")
        self.stats.inc_value(f"fleet/class/{OK}")  # fleet run's outcomes per class: ok beside A-D
        if out.discovered:
            # children go to Redis now, in a call of their own, before the parent's writes: SEEN makes a
            # redelivered parent's rediscovery a no-op, so enqueueing early is safe, and a pagination
            # chain moves at the speed of one Redis call per page (queued behind the committer's acks,
            # page N+1 waited ~7.6 ms of a ~23 ms chain step). The parent's own commit (DONE + ack) waits
            # for this one: a parent is never acknowledged before its children are queued.
            progress.children_pending = True
            flags = self.flags
            self.speculation.finished(state, not (flags.stopping or flags.releasing or self.health.fatal)
                                      and self.ledger.held() < self.cap())
            self.spawn(self.committer.queue_children(state, self.speculation.void))
        raw_mode = self.config.store_raw
        progress.write_raw = bool(state.fetch.body) and (raw_mode == "all" or (raw_mode == "items" and bool(out.items)))
        if not (out.items or progress.write_raw):
            self.committer.written(state, self.outcome(state))
            return
        assert self.durability is not None
        self.durability.queue(state)

    async def objects_answered(self, batch: list[tuple[LeaseState, WriteResult | None]],
                                results: list[WriteResult]) -> None:
        failed: list[tuple[LeaseState, BaseException]] = []
        for (state, _), (key, exc) in zip(batch, results, strict=True):
            if exc is not None:
                failed.append((state, exc))
                continue
            # the commit first: nothing the bookkeeping below could raise may strand a durable request
            self.committer.written(state, self.outcome(state))
            if state.out.items:
                self.stats.inc_value("fleet/objects")
                self.stats.inc_value("fleet/items/written", len(state.out.items))  # the summary's items: stored ones
                try:
                    missing = self.tally.written(state.env.run, state.out.items, item_key_of(self.spider()))
                except Exception as exc:  # the manifest's figures are best effort, never the request's fate
                    self.log.warning("tally_failed", run=state.env.run, fp=state.env.fp, error=type(exc).__name__)
                    missing = 0
                if missing:
                    self.stats.inc_value("fleet/items/key_missing", missing)
                    self.log.warning("item_key_missing", run=state.env.run, fp=state.env.fp, items=missing)
                self.log.info("object_written", run=state.env.run, fp=state.env.fp, key=key,
                              items=len(state.out.items))
        if failed:
            await self.write_failed(failed)
        # no wake-up here: acks wait up to FLEET_COMMIT_INTERVAL to share one Redis call (they are on
        # no critical path; children, which are, go in a call of their own: Committer.queue_children)

    async def probe_store(self) -> None:
        held = await self.health.probe_store(self.probe)
        for state in held or ():  # their objects are written again: no fetch, no budget spent
            if self.ledger.is_live(state) and self.durability is not None:
                self.durability.queue(state)

    async def write_failed(self, failed: list[tuple[LeaseState, BaseException]]) -> None:
        """Settle requests whose objects were not stored, each on its own.

        A key the store refuses (a run like ``../../x``) can never be written: DLQ (D, bad_envelope); nor
        can an item with a reference cycle or nested past the recursion limit (D, item_unencodable).
        Any other failure is the object's or the store's: one probe write tells which. Store down:
        the requests are held, their leases kept alive, and written again when it is back (no fetch
        and no retry budget spent), or released when the worker gives up. Store up: the object's own
        failure, retried on that request's A budget alone."""
        others = []
        for state, exc in failed:
            env = state.env
            why = storehealth.reason(exc)
            self.stats.inc_value("fleet/store/write_failed")
            if isinstance(exc, ItemEncodeError):  # the same on every attempt: no retry can write it
                self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                                 reason="item_unencodable", cls=D)
                self.stats.inc_value(f"fleet/class/{D}")
                self.spawn(self.failures.dead(state, "item_unencodable", str(exc)))
            elif isinstance(exc, InvalidKeyError):
                self.stats.inc_value("fleet/store/key_refused")
                self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                                 reason=why, cls=D)
                self.stats.inc_value(f"fleet/class/{D}")
                self.spawn(self.failures.dead(state, "bad_envelope", f"object key refused: {why}"))
            else:
                others.append((state, exc, why))
        if not others:
            return
        health = self.health
        outage = health.store_outage.down
        if not outage and not (self.flags.releasing or health.fatal):
            probe_exc = await health.check_store(self.probe)
            if probe_exc is not None:
                health.store_trouble(probe_exc)
                outage = True
        for state, exc, why in others:
            env = state.env
            if outage or self.flags.releasing or health.fatal:
                self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                                 reason=why, held=True)
                health.store_held.append(state)  # its lease stays ours (heartbeats) until written or released
                continue
            self.log.warning("object_write_failed", run=env.run, fp=env.fp, error=type(exc).__name__,
                             reason=why, cls=A)
            self.spawn(self.failures.settle(state, Verdict(A, f"store:{type(exc).__name__}"), None))


def _success(state: LeaseState) -> bool:
    """A 2xx response (or no status recorded: a page Fleet did not fetch over HTTP)."""
    status = state.fetch.status
    return not status or 200 <= int(status) < 300

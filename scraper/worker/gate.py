"""The politeness gate: a leased request to a gated domain waits here, outside Scrapy, until the fleet
grants it a permit (scraper/queue/lua/gate.lua), so the limits hold across every worker.

Why outside Scrapy's slots: a request waiting for its domain must not hold a concurrency slot nor block
requests to other domains (a per-domain bulkhead). ``Feeder.next_state`` hands a gated state to
:meth:`Gate.park` instead of the engine; it waits in a per-domain deque while one GATE call per domain
at a time asks Redis for permits; a granted state goes back to the front of the buffer (next_state serves
it) and the engine is kicked. Its permit is handed back when its fetch ends (:meth:`done`, from
scraper.worker.reports' ``fetched`` / ``fail`` / ``ignored`` / ``defer``) with the latency and outcome for
AIMD, batched into one UNGATE; a permit whose request left the ledger any other way is handed back by the sweep
(:meth:`tick`, from the keeper), which also renews the permits held (they expire with the lease, so a
dead worker's come back) and reports the waiting counts `fleet domains` shows.

Only built for a spider with a politeness setting (scraper.policy.politeness) or once a robots.txt
Crawl-delay is seen: a spider without one makes no gate call at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from scrapy import Request

from scraper.policy.politeness import Politeness
from scraper.queue.gating import GateReply
from scraper.worker.health import REDIS_ERRORS
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.queueport import QueuePort

__all__ = ["RATE_WINDOW", "WAITING_PER_DOMAIN", "DomainView", "Gate", "Rates"]

#: Requests one worker keeps waiting per gated domain beyond its limit; more go back to DELAYED for a
#: while (no budget used), or a slow domain would fill the worker's whole buffer and starve the others.
WAITING_PER_DOMAIN = 4
_TOP = 50  # domains reported (waiting counts, metrics): bounded label cardinality
RATE_WINDOW = 5.0  # seconds: a domain's dispatch rate is counted over windows at least this long


class DomainView(NamedTuple):
    """One gated domain as the worker metrics show it (scraper.worker.exporter)."""

    domain: str
    inflight: int  # in flight fleet-wide (the last GATE reply)
    limit: int  # the effective in-flight limit (0: none)
    window: float | None  # the AIMD window (None: no AIMD)
    waiting: int  # this worker's requests waiting for it
    spacing: float  # the mean spacing the fleet holds (DOWNLOAD_DELAY or Crawl-delay; 0: none), seconds
    rate: float  # this worker's dispatches to it per second (its grants; the fleet's is the sum over workers)


class Rates:
    """Grants per domain per second, counted over windows of at least RATE_WINDOW seconds (as gate.lua
    counts the fleet's): two numbers per domain, nothing per request. A domain nothing is granted to any
    more reads 0 within two windows."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.windows: dict[str, list[float]] = {}  # domain -> [window start, grants in it, last window's rate]

    def add(self, domain: str, n: int) -> None:
        w = self._roll(domain)
        w[1] += n

    def rate(self, domain: str) -> float:
        return self._roll(domain)[2] if domain in self.windows else 0.0

    def _roll(self, domain: str) -> list[float]:
        now = self.clock()
        w = self.windows.get(domain)
        if w is None:
            w = self.windows[domain] = [now, 0.0, 0.0]
        elif now - w[0] >= RATE_WINDOW:
            w[:] = [now, 0.0, w[1] / (now - w[0])]
        return w


class Gate:
    def __init__(self, policy: Politeness, ledger: Ledger, *, worker_id: str, lease_seconds: float, stats: Any,
                 log: Any, kick: Callable[[], None], defer: Callable[[LeaseState, float, str], None],
                 unspace: Callable[[Request], None]) -> None:
        self.policy = policy
        self.ledger = ledger
        self.worker_id = worker_id
        self.ttl = lease_seconds  # a permit lives as long as a lease, renewed with it
        self.stats = stats
        self.log = log
        self.kick = kick
        self.defer = defer  # (state, until, reason): back to DELAYED, no budget
        self.unspace = unspace  # the local download slot adds no spacing of its own (adapter.unspace_slot)
        self.queue: QueuePort | None = None
        self.waiting: dict[str, deque[LeaseState]] = {}
        self.granted: set[str] = set()  # lease ids granted and back in the buffer
        self.permits: dict[str, tuple[str, LeaseState]] = {}  # lease id -> (domain, state)
        self.asking: set[str] = set()  # domains with a GATE call or its retry timer outstanding
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.releases: list[tuple[str, str, int, str]] = []
        self.flushing = False
        self.crawl_delays: dict[str, float] = {}
        self.view: dict[str, GateReply] = {}  # the last reply per domain (metrics)
        self.rates = Rates()  # this worker's grants per domain per second (metrics)
        self.reported = False
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the feeder's side --------------------------------------------------------------------------

    def park(self, state: LeaseState) -> bool:
        """True if ``state`` waits at the gate instead of going to the engine now."""
        lid = state.lease.id
        if lid in self.granted:
            self.granted.discard(lid)
            return False
        domain = state.env.domain
        if not domain or not self.gated(domain):
            return False
        q = self.waiting.get(domain)
        if q is None:
            q = self.waiting[domain] = deque()
        pol = self.policy.for_domain(domain)
        if len(q) >= WAITING_PER_DOMAIN + pol.limit:
            # a slow domain must not fill this worker: back to DELAYED for about as long as the ones
            # waiting here take (by the spacing; at least 0.5 s), no budget used
            self.stats.inc_value("fleet/gate/deferred")
            pause = max(0.5, len(q) * self.spacing(domain))
            self.defer(state, time.time() + pause * (1.0 + random.random()), f"gate:{domain}"[:200])
            return True
        q.append(state)
        self.ledger.waiting[lid] = state
        self.stats.inc_value("fleet/gate/waited")
        self._want(domain)
        return True

    def dispatching(self, state: LeaseState, request: Request) -> None:
        """A granted request goes to the engine: its local slot must not space it a second time (the
        fleet's spacing is what the server sees)."""
        if state.lease.id in self.permits:
            # a Crawl-delay stays on the slot (middlewares.robots); Scrapy's AutoThrottle extension, on with
            # AUTOTHROTTLE_ENABLED, would space the slot by its own delay (5 s to start): the fleet's AIMD
            # window is the throttle
            pol = self.policy.for_domain(state.env.domain)
            if pol.delay > 0 or pol.aimd:
                self.unspace(request)

    def gated(self, domain: str) -> bool:
        """Whether requests to ``domain`` go through the gate (no speculation into it)."""
        return self.policy.for_domain(domain).gated or domain in self.crawl_delays

    def crawl_delay(self, domain: str, delay: float) -> bool:
        """robots.txt asks for ``delay`` seconds between requests to ``domain``: the fleet's spacing.
        False when it is not taken (bounded: the caller then spaces the local slot, as before)."""
        if len(self.crawl_delays) >= 10_000 and domain not in self.crawl_delays:
            return False
        self.crawl_delays[domain] = delay
        return True

    def spacing(self, domain: str) -> float:
        """The mean spacing the fleet holds ``domain`` to (RANDOMIZE_DOWNLOAD_DELAY draws around it)."""
        return max(self.policy.for_domain(domain).delay, self.crawl_delays.get(domain, 0.0))

    def snapshot(self) -> list[DomainView]:
        """The busiest domains, from the last GATE replies and this worker's own grants (the worker
        metrics: bounded label cardinality)."""
        rows = [DomainView(d, r.inflight, r.limit, r.window, len(self.waiting.get(d, ())), self.spacing(d),
                           self.rates.rate(d)) for d, r in self.view.items()]
        rows.sort(key=lambda x: (x.inflight + x.waiting, x.domain), reverse=True)
        return rows[:_TOP]

    def waiting_counts(self) -> dict[str, int]:
        top = sorted(((len(q), d) for d, q in self.waiting.items() if q), reverse=True)[:_TOP]
        return {d: n for n, d in top}

    # -- asking Redis -------------------------------------------------------------------------------

    def _want(self, domain: str) -> None:
        if domain in self.asking or self.closed:
            return
        self.asking.add(domain)
        task = asyncio.ensure_future(self._ask(domain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _later(self, domain: str, seconds: float) -> None:
        def fire() -> None:
            self.timers.pop(domain, None)
            self.asking.discard(domain)
            self._want(domain)
        self.timers[domain] = asyncio.get_running_loop().call_later(seconds, fire)

    def _now(self, domain: str) -> None:
        """A permit of ``domain`` came back: ask at once instead of at the retry timer."""
        timer = self.timers.pop(domain, None)
        if timer is not None:
            timer.cancel()
            self.asking.discard(domain)
        if self.waiting.get(domain):
            self._want(domain)

    async def _ask(self, domain: str) -> None:
        queue = self.queue
        assert queue is not None
        retry = 0.0
        try:
            while not self.closed:
                q = self.waiting.get(domain)
                while q and q[0].settled:  # settled while waiting (a cancel): nothing to ask for
                    self.ledger.waiting.pop(q.popleft().lease.id, None)
                if not q:
                    return
                pol = self.policy.for_domain(domain)
                spacing = max(pol.spacing(random.random()), self.crawl_delays.get(domain, 0.0))
                ids = [s.lease.id for s in list(q)[:16]]
                reply = await queue.gate(domain, ids, limit=pol.limit, spacing=spacing, burst=pol.burst,
                                         aimd=pol.aimd, start=pol.start, wmax=pol.wmax, ttl=self.ttl,
                                         ahead=spacing)
                self.view[domain] = reply
                self.stats.inc_value("fleet/gate/calls")
                if self.closed or self.waiting.get(domain) is not q:
                    # shutdown took the waiting states while GATE was on the wire: hand its grants back
                    for lid in ids[:reply.granted]:
                        self.releases.append((domain, lid, 0, "none"))
                    self._flush_soon()
                    return
                go: list[LeaseState] = []
                for i in range(min(reply.granted, len(q))):
                    st = q.popleft()
                    self.permits[st.lease.id] = (domain, st)
                    self.granted.add(st.lease.id)
                    wait = reply.waits[i] if i < len(reply.waits) else 0
                    if wait > 0:  # a slot reserved ahead: held here (still waiting) until it is due
                        asyncio.get_running_loop().call_later(wait / 1000.0, self._release_to_engine, st)
                    else:
                        self.ledger.waiting.pop(st.lease.id, None)
                        go.append(st)
                self.stats.inc_value("fleet/gate/granted", reply.granted)
                self.rates.add(domain, reply.granted)
                if go:
                    self.ledger.buffer.extendleft(reversed(go))
                    self.kick()
                if not q:
                    return
                if reply.retry_ms > 0:
                    retry = reply.retry_ms / 1000.0
                    return
        except REDIS_ERRORS as exc:
            self.log.warning("gate_unavailable", domain=domain, error=type(exc).__name__)
            retry = 1.0
        except Exception as exc:  # a script error, OOM…: the waiting requests must not wait forever
            self.log.warning("gate_failed", domain=domain, error=type(exc).__name__)
            retry = 1.0
        finally:
            if retry > 0 and not self.closed and self.waiting.get(domain):
                self._later(domain, retry)
            else:
                self.asking.discard(domain)

    def _release_to_engine(self, st: LeaseState) -> None:
        """A reserved slot is due: the state goes to the front of the buffer (unless shutdown took it)."""
        if self.ledger.waiting.pop(st.lease.id, None) is st and not st.settled:
            self.ledger.buffer.appendleft(st)
            self.kick()

    # -- permits back -------------------------------------------------------------------------------

    def done(self, state: LeaseState, outcome: str) -> None:
        """``state``'s fetch ended (outcome ``ok``, ``bad`` or ``none``): its permit goes back."""
        held = self.permits.get(state.lease.id)
        if held is None or held[1] is not state:
            return
        del self.permits[state.lease.id]
        self.granted.discard(state.lease.id)
        ms = int((time.monotonic() - state.fetch.started) * 1000) if outcome != "none" else 0
        self.releases.append((held[0], state.lease.id, ms, outcome))
        self._flush_soon()

    def forget(self, states: list[LeaseState]) -> None:
        """These waiting states leave the gate unfetched (their run was cancelled): out of their domain's
        queue, and a slot reserved ahead for one of them goes back."""
        for st in states:
            self.ledger.waiting.pop(st.lease.id, None)
            q = self.waiting.get(st.env.domain)
            if q is not None and st in q:
                q.remove(st)
            self.done(st, "none")

    def _flush_soon(self) -> None:
        if not self.flushing:
            self.flushing = True
            task = asyncio.ensure_future(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        """One UNGATE for the permits handed back since the last one; then the waiting ones may go."""
        queue = self.queue
        assert queue is not None
        try:
            await asyncio.sleep(0)  # the releases of this turn of the loop go together
            while self.releases:
                batch, self.releases = self.releases, []
                try:
                    await queue.ungate(batch, self.ttl)
                except REDIS_ERRORS as exc:
                    self.log.warning("gate_release_failed", count=len(batch), error=type(exc).__name__)
                    self.releases[:0] = batch  # the permits expire by themselves if Redis stays away
                    if self.closed:
                        return
                    await asyncio.sleep(1.0)
                    continue
                for domain in {b[0] for b in batch}:
                    self._now(domain)
        finally:
            self.flushing = False

    async def tick(self) -> None:
        """From the keeper, every heartbeat: permits whose request left the ledger are handed back,
        the others renewed; this worker's waiting counts reported."""
        queue = self.queue
        if queue is None:
            return
        ledger = self.ledger
        buffered = {s.lease.id for s in ledger.buffer}
        for lid, (_domain, st) in list(self.permits.items()):
            if ledger.active.get(lid) is not st and lid not in buffered and lid not in ledger.waiting:
                self.done(st, "none")
        renew = [(d, lid, 0, "renew") for lid, (d, _st) in self.permits.items()]
        if renew:
            await queue.ungate(renew, self.ttl)
        counts = self.waiting_counts()
        if counts or self.reported:
            await queue.report_waiting(self.worker_id, counts)
            self.reported = bool(counts)

    def clear(self) -> list[LeaseState]:
        """Shutdown: every waiting state leaves the gate (the caller hands their leases back)."""
        out = list(self.ledger.waiting.values())  # those in a domain's deque and those reserved ahead
        for q in self.waiting.values():
            q.clear()  # an _ask awaiting GATE holds its deque: it must find nothing left to grant
        self.waiting.clear()
        self.ledger.waiting.clear()
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.asking.clear()
        return out

    async def close(self) -> None:
        """Every permit and this worker's waiting report go (the leases were released by the caller)."""
        self.clear()
        self.closed = True
        for lid, (_d, st) in list(self.permits.items()):
            self.done(st, "none")
            self.permits.pop(lid, None)
        queue = self.queue
        if queue is None:
            return
        with contextlib.suppress(*REDIS_ERRORS):
            if self.releases:
                batch, self.releases = self.releases, []
                await queue.ungate(batch, self.ttl)
            if self.reported:
                await queue.report_waiting(self.worker_id, {})

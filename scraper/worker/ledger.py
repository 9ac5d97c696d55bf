"""The per-request ledger: what a worker knows about each request it leased, from lease to settlement.

Scrapy has no notion of "this request is finished" (every item passed the pipelines, every child request
known). The ledger keeps one :class:`LeaseState` per leased request and answers that question
(:meth:`LeaseState.finished`); the runtime settles a finished request exactly once.

A LeaseState is a few small records, each owned by one phase of a request's life, so a reader sees
which component writes what: :class:`Fetch` (the download and its proxy: the middlewares), :class:`Output`
(what the callback produced: the spider middleware and the item pipelines) and :class:`Progress` (where
its objects and commit are: the durability sinks and the committer). All are ``__slots__`` records: one
of each is built per page, nothing more.

Why a plain class with ``__slots__`` and not a dataclass: the properties below keep the flat names the
scheduler, middlewares and watchdog read (``state.items``, ``state.proxy_id``…) working while the
records are split, at the cost of one attribute hop for them; the runtime itself uses the records.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from scrapy import Request

from scraper.queue.client import Lease
from scraper.queue.envelope import META_KEY, Envelope

__all__ = ["DELIVERY_KEY", "LOCAL_REQUESTS", "VOID_KEY", "Fetch", "LeaseState", "Ledger", "Output", "Progress",
           "confirmed_leases", "reusable"]

# bound of Ledger.local: the newest children, which READY (LIFO) hands out first; older ones are rebuilt
# from their JSON. 4096 held ~2,000 entries behind a running pagination chain (measured): more memory
# and GC work for no measurable gain.
LOCAL_REQUESTS = 256


class Fetch:
    """The download: its answer, the proxy that carried it (written by the downloader middlewares) and
    the fingerprints of the redirect hops it followed (scraper.worker.redirects; recorded at its commit)."""

    __slots__ = ("body", "ctype", "fetched_at", "hops", "proxy_id", "started", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = b""
        self.ctype: bytes | None = None  # the response's Content-Type: its charset, for fleet replay's evidence
        self.fetched_at: str | None = None
        self.started = time.monotonic()
        self.proxy_id: str | None = None
        self.hops: list[str] = []


class Output:
    """What the callback produced: items (each counted until the pipelines settle it), child requests,
    pipeline errors, and whether the callback's output is exhausted."""

    __slots__ = ("discovered", "discovered_ids", "errors", "exhausted", "items", "pending")

    def __init__(self) -> None:
        self.pending = 0
        self.exhausted = False
        self.items: list[Any] = []
        self.discovered: list[Envelope] = []
        self.discovered_ids: list[str] = []  # their queue ids (see Ledger.local)
        self.errors: list[str] = []


class Progress:
    """Where a finished request's objects and commit are (written by the sinks and the committer)."""

    __slots__ = ("children_pending", "enqueued", "spec", "spec_index", "write_raw", "writes", "written")

    def __init__(self) -> None:
        self.write_raw = False
        self.children_pending = False  # its discovered requests are being queued; DONE + ack wait for that
        self.written = False  # its objects are durable
        self.writes: tuple[int, ...] = ()  # local store: the tickets of its puts (FileWriter.result)
        self.enqueued = 0
        self.spec: LeaseState | None = None  # the child this request's commit claims (1-based spec_index)
        self.spec_index = 0


DELIVERY_KEY = "_fleet_delivery"  # request meta: which delivery of a lease a request belongs to
# request meta: a fetch whose outcome belongs to nobody (a speculative fetch whose lease was not granted,
# or one the watchdog settled): its late answer is dropped (Speculation.drop_void)
VOID_KEY = "_fleet_void"


class LeaseState:
    """The ledger of one leased request, from lease to settlement. Identity matters (eq is identity):
    states are looked up in the buffer."""

    __slots__ = ("claim", "delivery", "env", "fetch", "lease", "local", "out", "progress", "request", "settled")

    def __init__(self, lease: Lease, env: Envelope, local: Request | None = None,
                 claim: asyncio.Future[bool] | None = None) -> None:
        self.lease = lease
        self.env = env
        self.request: Request | None = None
        self.delivery = 0  # this worker's serial of this delivery (request meta DELIVERY_KEY): Ledger.state_for
        self.local = local  # the Request its parent's callback built, if it may be reused as is
        self.settled = False
        # A speculative lease (feeder.Speculation): set while Redis has not yet confirmed that this worker
        # holds it; True once claimed (then None), False if it was not (void: the fetch is dropped).
        self.claim = claim
        self.fetch = Fetch()
        self.out = Output()
        self.progress = Progress()

    @property
    def id(self) -> str:
        return self.lease.id

    def finished(self) -> bool:
        """The callback's output is exhausted and every item left the pipelines."""
        out = self.out
        return out.exhausted and out.pending <= 0

    # flat names read (and, for proxy_id, written) outside the runtime: scheduler, middlewares, watchdog
    @property
    def status(self) -> int | None:
        return self.fetch.status

    @status.setter
    def status(self, value: int | None) -> None:
        self.fetch.status = value

    @property
    def proxy_id(self) -> str | None:
        return self.fetch.proxy_id

    @proxy_id.setter
    def proxy_id(self, value: str | None) -> None:
        self.fetch.proxy_id = value

    @property
    def fetch_started(self) -> float:
        return self.fetch.started

    @property
    def items(self) -> list[Any]:
        return self.out.items

    @property
    def pending(self) -> int:
        return self.out.pending

    @property
    def discovered(self) -> list[Envelope]:
        return self.out.discovered

    @property
    def exhausted(self) -> bool:
        return self.out.exhausted

    @property
    def errors(self) -> list[str]:
        return self.out.errors


def confirmed_leases(states: Iterable[LeaseState]) -> list[tuple[str, str]]:
    """(id, token) of the leases Redis has confirmed (not speculative fetches still waiting for theirs)."""
    return [(s.lease.id, s.lease.token) for s in states if s.claim is None]


_JSON_SCALARS = (str, int, float, bool, type(None))  # types JSON keeps as they are


def _plain(d: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) in _JSON_SCALARS for k, v in d.items())


def reusable(request: Request, env: Envelope) -> bool:
    """Whether ``env.to_request`` would rebuild ``request`` exactly: a plain Request, nothing left out of
    the envelope (runtime or non-JSON meta, cookies, flags, another encoding) and meta / cb_kwargs that
    JSON leaves as they are (str keys, scalar values)."""
    return (type(request) is Request and not request.flags and not request.cookies
            and request.encoding == "utf-8"
            and len(env.meta) == len(request.meta) - ("depth" in request.meta)
            and _plain(env.meta) and _plain(request.cb_kwargs))


class Ledger:
    """Every request this worker holds: leased and buffered (``buffer``, served in order) or handed to
    the engine (``active``, by lease id); plus the children this worker discovered whose Request may be
    reused if it leases them itself (``local``)."""

    __slots__ = ("active", "buffer", "deliveries", "flowing", "local", "waiting")

    def __init__(self) -> None:
        self.deliveries = 0  # serial of the deliveries this worker started (state_for)
        self.buffer: deque[LeaseState] = deque()
        self.active: dict[str, LeaseState] = {}
        # leased requests waiting at the politeness gate for their domain (scraper.worker.gate), by lease id:
        # held (heartbeat, release, the cap) but using no download slot
        self.waiting: dict[str, LeaseState] = {}
        # children this worker discovered, by queue id: (envelope, the callback's Request), oldest first
        self.local: dict[str, tuple[Envelope, Request]] = {}
        # items between their callback and the end of the item pipelines, by id() of the object the
        # callback yielded: [that object, the state(s) that yielded it]. Holding the object keeps its id
        # from being reused while the entry lives; an entry goes when the item leaves the pipelines.
        self.flowing: dict[int, list[Any]] = {}

    def held(self) -> int:
        return len(self.buffer) + len(self.active) + len(self.waiting)

    def fetching(self) -> int:
        """Requests that use (or wait for) a download slot: buffered, or active and not yet answered.
        Answered ones only wait for their writes and commit. Those waiting at the politeness gate count:
        the gate bounds them per domain, so one slow domain cannot take the whole budget."""
        unanswered = sum(1 for s in self.active.values() if s.fetch.status is None and not s.settled)
        return len(self.buffer) + len(self.waiting) + unanswered

    def leases(self) -> list[tuple[str, str]]:
        """Every confirmed lease held, buffered or active (what the heartbeat renews, close releases)."""
        return confirmed_leases([*self.buffer, *self.active.values(), *self.waiting.values()])

    def holds(self, lease_id: str) -> bool:
        return lease_id in self.active or lease_id in self.waiting or any(b.id == lease_id for b in self.buffer)

    def find(self, lease_id: str) -> LeaseState | None:
        return (self.active.get(lease_id) or self.waiting.get(lease_id)
                or next((b for b in self.buffer if b.id == lease_id), None))

    def is_live(self, state: LeaseState) -> bool:
        return self.active.get(state.id) is state

    def activate(self, state: LeaseState, request: Request) -> None:
        """``state`` goes to the engine as ``request``."""
        request.meta[META_KEY] = state.id
        self.deliveries += 1
        state.delivery = request.meta[DELIVERY_KEY] = self.deliveries
        state.request = request
        state.fetch.started = time.monotonic()
        self.active[state.id] = state

    def forget(self, state: LeaseState) -> None:
        if self.active.get(state.id) is state:
            del self.active[state.id]

    def state_for(self, request: Request) -> LeaseState | None:
        """The ledger of the delivery ``request`` belongs to, or None.

        The lease id alone is not enough: a request settled by the watchdog can be delivered again (same
        id) while its first delivery's callback still runs; that callback's items and errors must not
        reach the new delivery's ledger. Redirects keep the delivery serial (``Request.replace`` copies
        meta)."""
        key = request.meta.get(META_KEY)
        if not isinstance(key, str):
            return None
        state = self.active.get(key)
        if state is not None and request.meta.get(DELIVERY_KEY, state.delivery) != state.delivery:
            return None
        return state

    def remember_child(self, cid: str, env: Envelope, request: Request) -> None:
        """Keep the callback's Request of a child: if this worker leases the child itself (READY is LIFO,
        it mostly does), it is used instead of the envelope's JSON parsed and rebuilt (~12 µs a page)."""
        if len(self.local) >= LOCAL_REQUESTS:
            del self.local[next(iter(self.local))]
        self.local[cid] = (env, request)

    def take_child(self, cid: str) -> tuple[Envelope, Request] | None:
        return self.local.pop(cid, None)

    # -- items in the pipelines: the one place that counts them (Output.pending) ----------------------

    def item_out(self, state: LeaseState, item: Any) -> None:
        """``item`` left ``state``'s callback for the item pipelines: ``state`` is not finished until it
        comes back (:meth:`item_back`).

        Why by the object's identity and not a mark on it: items are the user's (dict, scrapy.Item,
        dataclass, attrs) and pipelines see them exactly as the callback made them; and no pipeline is
        told which response an item came from. Two dict operations per item."""
        state.out.pending += 1
        entry = self.flowing.get(id(item))
        if entry is None:
            self.flowing[id(item)] = [item, state]
        else:  # the same object yielded again before it left the pipelines
            entry.append(state)

    def item_back(self, item: Any) -> LeaseState | None:
        """``item`` (the object the callback yielded) left the pipelines, written, dropped or failed: the
        state that yielded it, its pending count down by one; None for an item no lease of this worker
        yielded (a plain Scrapy item, an item an extension scraped itself)."""
        key = id(item)
        entry = self.flowing.get(key)
        if entry is None:
            return None
        state: LeaseState = entry.pop(1)
        if len(entry) == 1:
            del self.flowing[key]
        state.out.pending -= 1
        return state

"""Where the politeness gate (scraper.worker.gate) is made and who sees it: built at start for a spider with
a politeness setting, or later, the first time robots.txt gives a domain a Crawl-delay.

Why apart from the facade: the gate may appear in the middle of a crawl, and then the feeder (parks at
it), the keeper (renews and sweeps its permits), fleet cancel (drops what waits at it) and the
speculation (stays out of gated domains) must all see it at once. Keeping the one place that hands it
out here keeps that list in one place, and lets the reports that end a fetch (scraper.worker.reports)
hand a permit back with one call whether or not there is a gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scrapy import Request
from scrapy.utils.httpobj import urlparse_cached

from scraper.policy.politeness import Politeness
from scraper.worker.cancels import Cancels
from scraper.worker.feeder import Feeder, Speculation
from scraper.worker.gate import Gate
from scraper.worker.keeper import Keeper
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.queueport import QueuePort

__all__ = ["Gating"]


class Gating:
    """The worker's gate, if it has one (``gate``), and the components it is handed to."""

    def __init__(self, politeness: Politeness, ledger: Ledger, *, feeder: Feeder, keeper: Keeper, cancels: Cancels,
                 speculation: Speculation, worker_id: str, lease_seconds: float, stats: Any, log: Any,
                 kick: Callable[[], None], defer: Callable[[LeaseState, float, str], None],
                 unspace: Callable[[Request], None]) -> None:
        self.politeness = politeness
        self.ledger = ledger
        self.feeder = feeder
        self.keeper = keeper
        self.cancels = cancels
        self.speculation = speculation
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.stats = stats
        self.log = log
        self.kick = kick
        self.defer = defer
        self.unspace = unspace
        self.queue: QueuePort | None = None  # set when the spider opens
        self.gate: Gate | None = None  # only for a spider with a politeness setting (or a robots.txt Crawl-delay)
        if politeness.active:
            self.make()

    def make(self) -> Gate:
        gate = self.gate = self.feeder.gate = self.keeper.gate = self.cancels.gate = Gate(
            self.politeness, self.ledger, worker_id=self.worker_id, lease_seconds=self.lease_seconds,
            stats=self.stats, log=self.log, kick=self.kick, defer=self.defer, unspace=self.unspace)
        self.speculation.gated = gate.gated
        gate.queue = self.queue
        return gate

    def bind(self, queue: QueuePort, log: Any) -> None:
        """The spider opened: its queue and its logger, for the gate made now or later."""
        self.queue, self.log = queue, log
        if self.politeness.ignored:  # AUTOTHROTTLE_START_DELAY and co.: said once, not silently dropped
            log.info("politeness_setting_ignored", keys=list(self.politeness.ignored),
                     set_in=self.politeness.ignored_in,
                     why="Fleet throttles a domain with a fleet-wide concurrency window, not a per-slot delay")
        if self.gate is not None:
            self.gate.log, self.gate.queue = log, queue

    def crawl_delay(self, request: Request, delay: float) -> bool:
        """robots.txt's Crawl-delay for the request's host: True if the gate spaces it fleet-wide."""
        host = (urlparse_cached(request).hostname or "").lower()
        gate = self.gate if self.gate is not None or self.queue is None else self.make()
        return gate is not None and bool(host) and gate.crawl_delay(host, delay)

    def done(self, state: LeaseState, outcome: str) -> None:
        """The request's fetch ended (``ok``, ``bad`` for AIMD, ``none``: nothing measured): its permit back."""
        if self.gate is not None:
            self.gate.done(state, outcome)

    def clear(self) -> list[LeaseState]:
        """Shutdown: the requests waiting at the gate, to be released with the local buffer."""
        return self.gate.clear() if self.gate is not None else []

    async def close(self) -> None:
        if self.gate is not None:
            await self.gate.close()

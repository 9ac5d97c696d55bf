"""Prometheus metrics of the shared queue: the backlog an autoscaler (KEDA) and alerts read.

Why a collector that reads Redis on every scrape, and not counters kept by the workers: the numbers
that matter for scaling and paging (READY, DELAYED, PARKED, the DLQ, open breakers) live in Redis
and are shared by every worker; a worker's own counters die with it and would have to be summed
across pods. One exporter per Redis (``fleet metrics``, e.g. a one-replica Deployment) is enough.

Each scrape costs Redis, per spider: four O(1) counts in one pipeline, one HGETALL of the breakers that
are not closed, a ZCARD per domain with parked requests, and the SEEN/DONE counts of the runs alive
(TTL). Nothing grows with the number of domains ever crawled.

A scrape that cannot read Redis answers ``fleet_up 0`` and no queue figures, so a scaler never takes
an outage for an empty queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scraper.infra import log
from scraper.infra.redact import redact_url
from scraper.queue.client import known_spiders
from scraper.queue.shards import open_queue

__all__ = ["QUEUE_GAUGES", "BacklogCollector", "Connect", "snapshot"]

# (key in FleetQueue.counts(), metric name, help)
QUEUE_GAUGES = (
    ("ready", "fleet_queue_ready", "Requests in READY, waiting for a worker."),
    ("inflight", "fleet_queue_inflight", "Requests leased to a worker (IN-FLIGHT)."),
    ("delayed", "fleet_queue_delayed", "Requests waiting out a class-A backoff or a proxy hold (DELAYED)."),
    ("parked", "fleet_queue_parked", "Requests parked behind an open drift breaker."),
    ("dlq", "fleet_dlq_entries", "Entries in the dead-letter queue (class D, exhausted budgets, bad envelopes)."),
)

Connect = Callable[[], Awaitable[Any]]


async def snapshot(client: Any, spiders: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Queue counts, breaker states and per-run SEEN/DONE of each spider (all known spiders by default)."""
    names = list(spiders) if spiders else await known_spiders(client)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        q = await open_queue(client, name)
        counts: dict[str, Any] = dict(await q.counts())
        counts["breakers"] = await q.breaker_counts()
        counts["runs"] = await q.runs()
        out[name] = counts
    return out


class BacklogCollector(Collector):
    """Reads Redis when Prometheus scrapes (in the HTTP server's thread, with a loop of its own)."""

    def __init__(self, connect: Connect, spiders: Sequence[str] | None = None, timeout: float = 10.0) -> None:
        self.connect = connect
        self.spiders = list(spiders or [])
        self.timeout = timeout
        self.last_error = ""
        self.log = log.get_logger(component="metrics")
        self._lock = threading.Lock()  # scrapes run in threads of their own

    async def _read(self) -> dict[str, dict[str, Any]]:
        client = await self.connect()
        try:
            return await snapshot(client, self.spiders)
        finally:
            await client.aclose()

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        data: dict[str, dict[str, Any]] | None = None
        error: BaseException | None = None
        try:
            data = asyncio.run(asyncio.wait_for(self._read(), self.timeout))
        except Exception as exc:  # an outage or a timeout: reported as fleet_up 0, never as zeros
            error = exc
        with self._lock:
            if error is None:
                if self.last_error:
                    self.log.info("metrics_redis_recovered")
                self.last_error = ""
            else:
                if not self.last_error:  # once per outage, not once per scrape
                    self.log.warning("metrics_redis_unavailable", error=type(error).__name__,
                                     detail=redact_url(str(error))[:300])
                self.last_error = redact_url(f"{type(error).__name__}: {error}")[:300]
        yield GaugeMetricFamily("fleet_up", "1 when this scrape read the queue from Redis, else 0.",
                                value=0 if data is None else 1)
        yield GaugeMetricFamily("fleet_scrape_duration_seconds", "Time this scrape spent reading Redis.",
                                value=time.monotonic() - started)
        if data is None:
            return
        for key, name, doc in QUEUE_GAUGES:
            fam = GaugeMetricFamily(name, doc, labels=["spider"])
            for spider, c in sorted(data.items()):
                fam.add_metric([spider], c[key])
            yield fam
        brk = GaugeMetricFamily("fleet_breakers", "Drift breakers per state (open: the target's requests "
                                "are parked; half_open: one probe is allowed through).", labels=["spider", "state"])
        for spider, c in sorted(data.items()):
            for state, n in sorted(c["breakers"].items()):
                brk.add_metric([spider, state], n)
        yield brk
        seen = GaugeMetricFamily("fleet_run_seen", "Requests enqueued (SEEN) in a run.", labels=["spider", "run"])
        done = GaugeMetricFamily("fleet_run_done", "Requests finished (DONE) in a run.", labels=["spider", "run"])
        for spider, c in sorted(data.items()):
            for run, rc in sorted(c["runs"].items()):
                seen.add_metric([spider, run], rc["seen"])
                done.add_metric([spider, run], rc["done"])
        yield seen
        yield done

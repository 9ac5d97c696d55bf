"""Each worker's own Prometheus metrics on ``FLEET_METRICS_PORT`` (off by default): a Scrapy extension.

Why read Scrapy's stats at scrape time instead of updating Prometheus counters as pages go by: the
worker already counts nearly everything in its stats (``fleet/...`` keys, Scrapy's ``item_scraped_count``),
so those counters cost the hot path nothing more; a scrape copies the stats dict once (one C-level copy
under the GIL, safe against the reactor thread writing it) and turns the keys into metric families. Only
what is known as it happens is observed then: each downloaded response (Scrapy's ``response_downloaded``,
sent for every status before the classifier can drop the response: one counter inc and one histogram
observe of its ``download_latency`` meta per page) and the committer's time per ``COMMIT`` call
(``FleetPort.time_commits``: one observe per batch).

The backlog (READY, IN-FLIGHT, DLQ, breakers) is not here: it is fleet-wide and lives in Redis, so it is
``fleet metrics``'s (scraper/infra/metrics.py), scraped once, not once per worker. Names start with
``fleet_worker_``; the alerts and the dashboard under deploy/ read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.http import Response

from scraper.infra import log
from scraper.worker.ports import fleet_of

__all__ = ["COUNTERS", "FETCH_BUCKETS", "WorkerMetrics"]

# Scrapy stats key -> (metric name without _total, help)
COUNTERS: dict[str, tuple[str, str]] = {
    "item_scraped_count": ("fleet_worker_items", "Items that passed the item pipelines."),
    "fleet/objects": ("fleet_worker_objects_written", "Item objects (one per request with items) made durable."),
    "fleet/retried": ("fleet_worker_retries", "Requests sent back to DELAYED for a retry (class A or B)."),
    "fleet/skipped_done": ("fleet_worker_dedup_skips", "Leased entries skipped unfetched: already DONE in their run."),
    "fleet/acked": ("fleet_worker_acked", "Requests acknowledged after DONE (their objects durable)."),
    "fleet/dlq": ("fleet_worker_dead_lettered", "Requests this worker sent to the DLQ."),
    "fleet/parked": ("fleet_worker_parked", "Requests parked behind a drift breaker."),
    "fleet/lease_lost": ("fleet_worker_leases_lost", "Leases found taken over by the reaper while held."),
    "fleet/cancelled_dropped": ("fleet_worker_cancelled_dropped", "Leases of cancelled runs dropped unwritten."),
    "fleet/store/write_failed": ("fleet_worker_store_write_failures", "Object writes that failed."),
}
OUTCOME_PREFIX = "fleet/outcome/"  # fleet/outcome/<class>/<reason>
BAN_PREFIX = "fleet/proxy/banned/"  # fleet/proxy/banned/<proxy id>
HEDGE_PREFIX = "fleet/hedge/"  # fleet/hedge/<requests|sent|won|lost|failed|denied> (scraper.worker.hedge)
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class _StatsCollector(Collector):
    """The worker's Scrapy stats as Prometheus counters, read at each scrape."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.spider = ""

    def collect(self) -> Iterable[Any]:
        stats = self.crawler.stats
        snapshot: dict[str, Any] = dict(stats.get_stats()) if stats is not None else {}
        sp = self.spider
        up = GaugeMetricFamily("fleet_worker_up", "1 while the worker's spider is open.", labels=["spider"])
        up.add_metric([sp], 1.0 if sp else 0.0)
        yield up
        for key, (name, doc) in COUNTERS.items():
            c = CounterMetricFamily(name, doc, labels=["spider"])
            c.add_metric([sp], float(snapshot.get(key, 0) or 0))
            yield c
        yield from self._gate(sp)
        yield from self._prefixed(snapshot, OUTCOME_PREFIX, "fleet_worker_outcomes",
                                  "Settled attempts by failure class (ok, A, B, C, D) and reason.", ["class", "reason"])
        yield from self._prefixed(snapshot, BAN_PREFIX, "fleet_worker_proxy_bans",
                                  "Proxy bans this worker started, per proxy id.", ["proxy"])
        yield from self._prefixed(snapshot, HEDGE_PREFIX, "fleet_worker_hedges",
                                  "Hedged fetches (FLEET_HEDGE): eligible requests, hedges sent, won, lost, "
                                  "failed, denied by the rate bound.", ["outcome"])

    def _gate(self, sp: str) -> Iterable[Any]:
        """The politeness gate's busiest domains (top 50): in flight fleet-wide, limit, window, waiting,
        spacing, this worker's rate."""
        fleet = fleet_of(self.crawler)
        gate = fleet.gate if fleet is not None else None
        if gate is None:
            return
        fams = {n: GaugeMetricFamily(f"fleet_domain_{n}", doc, labels=["spider", "domain"]) for n, doc in (
            ("inflight", "Requests in flight to the domain, fleet-wide (the last GATE reply)."),
            ("limit", "The domain's effective in-flight limit (0: none)."),
            ("window", "The domain's AIMD window."),
            ("waiting", "This worker's requests waiting at the gate for the domain."),
            ("spacing_seconds", "The domain's mean fleet-wide spacing (DOWNLOAD_DELAY or Crawl-delay; 0: none)."),
            ("rate", "This worker's dispatches to the domain per second (over >= 5 s; sum over workers for "
                     "the fleet's)."))}
        for row in gate.snapshot():
            labels = [sp, row.domain]
            fams["inflight"].add_metric(labels, float(row.inflight))
            fams["limit"].add_metric(labels, float(row.limit))
            if row.window is not None:
                fams["window"].add_metric(labels, row.window)
            fams["waiting"].add_metric(labels, float(row.waiting))
            fams["spacing_seconds"].add_metric(labels, row.spacing)
            fams["rate"].add_metric(labels, round(row.rate, 3))
        yield from fams.values()

    def _prefixed(self, snapshot: dict[str, Any], prefix: str, name: str, doc: str,
                  labels: list[str]) -> Iterator[CounterMetricFamily]:
        c = CounterMetricFamily(name, doc, labels=["spider", *labels])
        for key, value in snapshot.items():
            if key.startswith(prefix):
                parts = key[len(prefix):].split("/", len(labels) - 1)
                if len(parts) == len(labels):
                    c.add_metric([self.spider, *parts], float(value or 0))
        yield c


class WorkerMetrics:
    """Scrapy extension (settings.EXTENSIONS): serves the worker's metrics while its spider is open."""

    def __init__(self, crawler: Crawler, port: int) -> None:
        self.crawler = crawler
        self.port = port
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = _StatsCollector(crawler)
        self.registry.register(self.stats)
        self.fetch = Histogram("fleet_worker_fetch_seconds", "Download latency of each response (Scrapy's "
                               "download_latency).", ["spider"], buckets=FETCH_BUCKETS, registry=self.registry)
        self.commit = Histogram("fleet_worker_commit_seconds", "Time of each COMMIT call (DONE + acks of a batch, "
                                "retries included).", ["spider"], buckets=COMMIT_BUCKETS, registry=self.registry)
        self.pages = Counter("fleet_worker_pages_fetched", "Responses downloaded (every status).", ["spider"],
                             registry=self.registry)
        self._fetch_child: Any = None
        self._pages_child: Any = None
        self._server: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> WorkerMetrics:
        port = crawler.settings.getint("FLEET_METRICS_PORT", 0)
        if port <= 0:
            raise NotConfigured("FLEET_METRICS_PORT is not set")
        ext = cls(crawler, port)
        crawler.signals.connect(ext._opened, signal=signals.spider_opened)
        crawler.signals.connect(ext._closed, signal=signals.spider_closed)
        return ext

    def _opened(self, spider: Spider) -> None:
        try:
            self._server, _ = start_http_server(self.port, registry=self.registry)
        except OSError as exc:  # the port is taken: a worker without metrics beats no worker
            log.get_logger().error("worker_metrics_unavailable", port=self.port, error=str(exc)[:200])
            return
        self.stats.spider = spider.name
        self._fetch_child = self.fetch.labels(spider.name)
        self._pages_child = self.pages.labels(spider.name)
        self.crawler.signals.connect(self._response, signal=signals.response_downloaded)
        fleet = fleet_of(self.crawler)
        if fleet is not None:
            fleet.time_commits(self.commit.labels(spider.name).observe)
        log.get_logger().info("worker_metrics_serving", port=self.port)

    def _response(self, response: Response, request: Request, spider: Spider) -> None:
        self._pages_child.inc()
        latency = request.meta.get("download_latency")
        if latency is not None:
            self._fetch_child.observe(latency)

    def _closed(self, spider: Spider, reason: str) -> None:
        fleet = fleet_of(self.crawler)
        if fleet is not None:
            fleet.time_commits(None)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

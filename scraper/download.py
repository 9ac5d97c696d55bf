"""HTTP(S) download handler: Scrapy's HTTP/1.1 handler without Twisted's hidden automatic retry, and
with the download-timeout timers it cancels swept out of the reactor promptly.

Why no automatic retry: Twisted's ``HTTPConnectionPool.retryAutomatically`` (True, and Scrapy leaves
it so) resends an idempotent request once, inside the same download, when a reused keep-alive
connection is reset before the response. The site then sees two requests for one delivery, and the A
budget (every attempt is a delivery from Redis, with its backoff) never counts the second one. With it
off, a reset is an ordinary class A outcome: retried as data, with backoff, counted.

Why the sweep: every download arms a ``DOWNLOAD_TIMEOUT`` reactor timer and cancels it when the
response is in. Twisted drops cancelled timers from its heap only when a timer fires, and with 30 s
timeouts the next one due is usually Scrapy's 5 s engine heartbeat: at ~1,200 pages/s about 9,000
cancelled timers (27,000 objects with their bound methods) were alive at any time, old enough to reach
the collector's oldest generation, where they made every full collection walk them (~7 ms each, 2 %
of a worker's CPU, measured with gc callbacks on the bench site). A no-op reactor timer every
``SWEEP_SECONDS`` lets Twisted purge them while they are young.
"""

from __future__ import annotations

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.crawler import Crawler
from twisted.internet import task

SWEEP_SECONDS = 0.25


def _nothing() -> None:
    """The sweep's timer: firing it is the point (Twisted purges cancelled timers when one fires)."""


class TimerSweep:
    """The sweep's timer, started with a handler and stopped when it closes."""

    def __init__(self) -> None:
        self._call = task.LoopingCall(_nothing)
        self._call.start(SWEEP_SECONDS, now=False)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()


class FleetHTTPDownloadHandler(HTTP11DownloadHandler):
    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._pool.retryAutomatically = False
        self._sweep = TimerSweep()

    async def close(self) -> None:
        self._sweep.stop()
        await super().close()

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

Why bodies over DOWNLOAD_MAXSIZE are typed: see :meth:`FleetHTTPDownloadHandler.download_request`.

Hedged fetches (a spider's ``FLEET_HEDGE``) race here, below every middleware: :mod:`scraper.worker.hedge`.
"""

from __future__ import annotations

import re

from scrapy import Request
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.crawler import Crawler
from scrapy.exceptions import DownloadCancelledError
from scrapy.http import Response
from twisted.internet import task

from scraper.policy.refused import BodyTooLarge
from scraper.worker.hedge import Hedger

__all__ = ["SWEEP_SECONDS", "FleetHTTPDownloadHandler", "TimerSweep"]

SWEEP_SECONDS = 0.25
# the start of Scrapy's message when Content-Length already says too much (it ends with the request)
_EXPECTED = re.compile(r"Expected to receive (\d+) bytes ")


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
        self._hedger = Hedger.from_crawler(crawler)  # None unless the spider sets FLEET_HEDGE

    async def download_request(self, request: Request) -> Response:
        hedger = self._hedger
        if hedger is not None and hedger.eligible(request):
            return await hedger.fetch(request, self._download)
        return await self._download(request)

    async def _download(self, request: Request) -> Response:
        """Scrapy's download, with its DOWNLOAD_MAXSIZE cancellation typed as :class:`BodyTooLarge`.

        Why: the handler aborts a body over the limit (announced by Content-Length, or counted while it
        streams in) with a bare ``DownloadCancelledError``, which the taxonomy would retry as class A,
        though the next attempt gets the same body. Nothing else cancels a download here (a timeout is
        ``DownloadTimeoutError``), so this one is class D ``body:too_large``."""
        try:
            return await super().download_request(request)
        except DownloadCancelledError as exc:
            m = _EXPECTED.match(str(exc))
            announced = m.group(1) if m else None
        limit = int(request.meta.get("download_maxsize", self._default_maxsize))
        size = f"content_length={announced}" if announced else f"received>{limit}"
        raise BodyTooLarge(f"{size} limit={limit} stage=download")

    async def close(self) -> None:
        self._sweep.stop()
        await super().close()

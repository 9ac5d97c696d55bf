"""HTTP(S) download handler: Scrapy's HTTP/1.1 handler without Twisted's hidden automatic retry.

Why: Twisted's ``HTTPConnectionPool.retryAutomatically`` (True, and Scrapy leaves it so) resends an
idempotent request once, inside the same download, when a reused keep-alive connection is reset
before the response. The site then sees two requests for one delivery, and the A budget (every
attempt is a delivery from Redis, with its backoff) never counts the second one. With it off, a reset
is an ordinary class A outcome: retried as data, with backoff, counted.
"""

from __future__ import annotations

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.crawler import Crawler


class FleetHTTPDownloadHandler(HTTP11DownloadHandler):
    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._pool.retryAutomatically = False

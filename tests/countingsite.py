"""A loopback HTTP site that counts what the server sees (the politeness and worker-metrics tests)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests import loopback

__all__ = ["CountingSite"]


class CountingSite:
    """A loopback site that counts what it receives: requests in flight at once (``peak``), arrival times,
    hits; each page takes ``pause`` seconds; past ``capacity`` requests in flight it answers 429 at once."""


    def __init__(self, host: str = "127.0.0.1", pause: float = 0.2, capacity: int = 0) -> None:
        self.lock = threading.Lock()
        self.refused = 0
        self.refused_times: list[float] = []
        self.now = 0
        self.peak = 0
        self.hits = 0
        self.times: list[float] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with site.lock:
                    if capacity and site.now >= capacity:
                        site.refused += 1
                        site.refused_times.append(time.monotonic())
                        full = True
                    else:
                        full = False
                        site.now += 1
                        site.hits += 1
                if full:  # over capacity: 429 at once, not counted in flight
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with site.lock:
                    site.times.append(time.monotonic())
                    site.peak = max(site.peak, site.now)
                time.sleep(pause)
                with site.lock:
                    site.now -= 1
                body = b"<html><body>ok</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = loopback.serve(Handler, host)
        self.base = loopback.base_url(self.server)

    def stop(self) -> None:
        loopback.stop(self.server)

"""Breaker alerts to a webhook (Slack-compatible JSON), without ever blocking the crawl.

Why a thread with a bounded queue: the reactor must not wait on a slow or dead alert endpoint, and an
alert storm must not grow memory; a full queue drops the newest alert and logs that it did.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from scraper.infra import log

__all__ = ["Alerter"]


def _basic_auth(url: str) -> tuple[str, dict[str, str]]:
    """The webhook URL without its ``user:password@`` and the Authorization header that says it instead: urllib
    took the userinfo for part of the host name (every alert failed, and the password went to the resolver)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    cred = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": "Basic " + base64.b64encode(cred).decode()}


class Alerter:
    def __init__(self, url: str | None, *, attempts: int = 4, timeout: float = 5.0) -> None:
        self.url: str | None = url
        self._auth: dict[str, str] = {}
        if url:
            self.url, self._auth = _basic_auth(url)
        self.attempts = attempts
        self.timeout = timeout
        self.log = log.get_logger(component="alerts")
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=100)
        self._thread: threading.Thread | None = None

    def send(self, payload: dict[str, Any]) -> None:
        if not self.url:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleet-alerts", daemon=True)
            self._thread.start()
        try:
            self._q.put_nowait(payload)
        except queue.Full:
            self.log.warning("alert_dropped", reason="queue full", event_name=payload.get("event"))

    def close(self, timeout: float = 5.0) -> None:
        """Give queued alerts a bounded chance to go out before the process exits."""
        if self._thread is None:
            return
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            payload = self._q.get()
            if payload is None:
                return
            self._post(payload)

    def _post(self, payload: dict[str, Any]) -> None:
        assert self.url is not None
        data = json.dumps(payload, default=str).encode("utf-8")
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            req = urllib.request.Request(
                self.url, data=data, headers={"Content-Type": "application/json", **self._auth}, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    if 200 <= resp.status < 300:
                        self.log.info("alert_sent", event_name=payload.get("event"), attempt=attempt)
                        return
            except Exception as exc:  # any failure is retried, then logged, never raised
                err = type(exc).__name__
            else:
                err = "non-2xx"
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        self.log.warning("alert_failed", event_name=payload.get("event"), error=err)

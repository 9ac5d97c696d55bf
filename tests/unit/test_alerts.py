"""The breaker alerts' webhook client (scraper.worker.alerts.Alerter) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from scraper.worker.alerts import Alerter
from tests import loopback


class _Hook(BaseHTTPRequestHandler):
    got: list[tuple[str, str | None, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hook.got.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_webhook_url_with_credentials_sends_them_as_basic_auth() -> None:
    """urllib takes ``user:pass@`` for part of the host: every alert failed (and the password went to the
    resolver) though the URL passed the start-up check. The credentials now go in an Authorization header."""
    _Hook.got = []
    with loopback.serving(_Hook) as url:
        host = url.split("://", 1)[1]
        alerter = Alerter(f"http://hook%20user:S3CR3T%40x@{host}/hook?k=1", attempts=1)
        alerter.send({"event": "breaker_opened"})
        alerter.close()
    assert _Hook.got == [("/hook?k=1", "Basic " + base64.b64encode(b"hook user:S3CR3T@x").decode(),
                          {"event": "breaker_opened"})]
    assert alerter.url is not None and "S3CR3T" not in alerter.url


def test_a_webhook_url_without_credentials_is_sent_as_it_is() -> None:
    _Hook.got = []
    with loopback.serving(_Hook) as url:
        alerter = Alerter(f"{url}/hook", attempts=1)
        alerter.send({"event": "breaker_opened"})
        alerter.close()
    assert _Hook.got == [("/hook", None, {"event": "breaker_opened"})]

"""A test HTTP server on a free loopback port, serving from a daemon thread: the scaffolding every test site
(counting, robots, hostile links, drift webhook, manifest shop, cancel gate, rendered page) shares."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["OkPages", "base_url", "reply", "serve", "serving", "stop"]


def serve(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", *,
          daemon_threads: bool = False) -> ThreadingHTTPServer:
    """``handler`` served on ``host`` at a free port; ``daemon_threads``: requests still in a handler do not
    hold up ``stop`` (a site whose handlers wait on the test)."""
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = daemon_threads
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def base_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served for the length of a ``with``: its base URL."""
    server = serve(handler)
    try:
        yield base_url(server)
    finally:
        stop(server)


def reply(handler: BaseHTTPRequestHandler, body: bytes, *, status: int = 200, content_type: str = "text/html",
          headers: dict[str, str] | None = None) -> None:
    """One whole response: status, Content-Type, Content-Length (and ``headers``), body."""
    handler.send_response(status)
    for k, v in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


class OkPages(BaseHTTPRequestHandler):
    """Every path: the same small 200 HTML page (a site whose only job is to answer)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        reply(self, b"<html><body>ok</body></html>")

"""A test HTTP server on a free loopback port, serving from a daemon thread: the scaffolding every test site
(counting, robots, hostile links, drift webhook, manifest shop, cancel gate, rendered page) shares."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["base_url", "serve", "stop"]


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

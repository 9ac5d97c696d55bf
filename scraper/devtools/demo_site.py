"""A bundled, deterministic product-catalogue site served on loopback.

Why: the fleet's demo, smoke test and integration tests need a real HTTP target that is
offline, fast, reproducible and able to simulate layout drift (``template = "v2"``) without
touching the network. Pure stdlib so it runs anywhere the fleet does.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import html
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["DemoSite", "main", "product_fields"]

_ADJECTIVES = (
    "Sturdy", "Elegant", "Compact", "Vintage", "Modern", "Rustic", "Deluxe", "Handmade",
    "Portable", "Classic", "Minimal", "Bright",
)
_NOUNS = (
    "Teapot", "Notebook", "Lamp", "Backpack", "Mug", "Chair", "Clock", "Scarf",
    "Kettle", "Pen", "Blanket", "Vase", "Bookend",
)
_LIST_RE = re.compile(r"^/catalogue/page-(\d+)\.html$")
_PRODUCT_RE = re.compile(r"^/product/(\d+)\.html$")
TEMPLATES = ("v1", "v2")


def product_fields(product_id: int) -> dict[str, Any]:
    """Deterministic fields of product ``product_id``: what a correct spider must extract."""
    digest = hashlib.sha256(f"demo-product-{product_id}".encode()).digest()
    adjective = _ADJECTIVES[digest[0] % len(_ADJECTIVES)]
    name = f"{adjective} {_NOUNS[digest[1] % len(_NOUNS)]} #{product_id}"
    pence = 199 + int.from_bytes(digest[2:4], "big") % 9800
    return {
        "name": name,
        "price": round(pence / 100, 2),
        "sku": f"SKU-{product_id:05d}",
        "description": f"The {name.lower()} is item {product_id} of the demo catalogue. "
        f"Batch {digest[4]:03d}, colour code {digest[5]:02x}.",
    }


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)} | Fleet demo shop</title></head>\n"
        f"<body>\n<header><a href=\"/\">Fleet demo shop</a></header>\n{body}\n</body></html>\n"
    )


class _QuietServer(ThreadingHTTPServer):
    """Threading server that doesn't print tracebacks when clients hang up (crawlers do)."""

    daemon_threads = True
    request_queue_size = 1024  # crawlers open many connections at once; 5 (the default) resets them

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Swallow per-connection errors: resets and broken pipes are normal under load."""


class DemoSite:
    """Serve the demo catalogue from a daemon thread; ``template`` and ``hits`` are live."""

    def __init__(
        self,
        n_products: int = 120,
        per_page: int = 20,
        host: str = "127.0.0.1",
        port: int = 0,
        template: str = "v1",
        latency: float = 0.0,
        path_latency: dict[str, float] | None = None,
    ) -> None:
        if n_products < 1 or per_page < 1:
            raise ValueError("n_products and per_page must be >= 1")
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
        self.n_products = n_products
        self.per_page = per_page
        self.host = host
        self.port = port
        self.template = template
        self.latency = latency  # seconds added to every response (tests of slow targets)
        self.path_latency = dict(path_latency or {})  # and to the responses of these paths, on top
        self.hits: collections.Counter[str] = collections.Counter()
        self._hits_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> DemoSite:
        """Bind (port 0 picks a free port) and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        server = _QuietServer((self.host, self.port), _make_handler(self))
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # fast stop(): shutdown() waits one poll
            name=f"demo-site:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Keep-alive handler threads would otherwise keep answering after stop(); cut them so
        # an outage looks like one to clients (connection reset / refused).
        with self._hits_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread (CLI use) until interrupted."""
        self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> DemoSite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- urls ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:43123`` (the real port once started)."""
        return f"http://{self.host}:{self.port}"

    @property
    def n_pages(self) -> int:
        """Number of list pages."""
        return -(-self.n_products // self.per_page)

    @property
    def start_url(self) -> str:
        """First list page, where a crawl starts."""
        return f"{self.base_url}/catalogue/page-1.html"

    def product_urls(self) -> list[str]:
        """Absolute URLs of every product page, in ID order."""
        return [f"{self.base_url}/product/{i}.html" for i in range(1, self.n_products + 1)]

    def list_urls(self) -> list[str]:
        """Absolute URLs of every list page, in page order."""
        return [f"{self.base_url}/catalogue/page-{n}.html" for n in range(1, self.n_pages + 1)]

    def expected_item(self, product_id: int) -> dict[str, Any]:
        """The item a correct spider extracts from product ``product_id`` under template v1."""
        return {**product_fields(product_id), "url": f"{self.base_url}/product/{product_id}.html"}

    # -- rendering -------------------------------------------------------------------------
    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._hits_lock:
            if alive:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _count(self, path: str) -> None:
        with self._hits_lock:
            self.hits[path] += 1

    def render(self, path: str) -> tuple[int, dict[str, str], str]:
        """Route ``path`` to (status, extra headers, html body); pure so tests can call it."""
        if path in ("/", "/index.html"):
            body = _page(
                "Home",
                '<h1>Fleet demo shop</h1>\n<p><a href="/catalogue/page-1.html">Browse the catalogue'
                "</a></p>",
            )
            return 302, {"Location": "/catalogue/page-1.html"}, body
        match = _LIST_RE.match(path)
        if match and 1 <= int(match.group(1)) <= self.n_pages:
            return 200, {}, self._render_list(int(match.group(1)))
        match = _PRODUCT_RE.match(path)
        if match and 1 <= int(match.group(1)) <= self.n_products:
            return 200, {}, self._render_product(int(match.group(1)))
        return 404, {}, _page("Not found", "<h1>404 Not found</h1>")

    def _render_list(self, page: int) -> str:
        first = (page - 1) * self.per_page + 1
        last = min(page * self.per_page, self.n_products)
        articles = []
        for pid in range(first, last + 1):
            name = html.escape(product_fields(pid)["name"])
            articles.append(
                f'<li><article class="product"><a href="/product/{pid}.html">{name}</a>'
                "</article></li>"
            )
        pager = [f'<li class="current">Page {page} of {self.n_pages}</li>']
        if page > 1:
            prev_link = f'<a href="page-{page - 1}.html">previous</a>'
            pager.insert(0, f'<li class="previous">{prev_link}</li>')
        if page < self.n_pages:
            pager.append(f'<li class="next"><a href="page-{page + 1}.html">next</a></li>')
        body = (
            f"<h1>Catalogue</h1>\n<ol class=\"products\">\n{chr(10).join(articles)}\n</ol>\n"
            f"<ul class=\"pager\">{''.join(pager)}</ul>"
        )
        return _page(f"Catalogue page {page}", body)

    def _render_product(self, pid: int) -> str:
        f = product_fields(pid)
        name, desc = html.escape(f["name"]), html.escape(f["description"])
        price = f"£{f['price']:.2f}"
        if self.template == "v2":
            # Layout drift: the redesign renamed the classes, so v1 selectors find nothing.
            body = (
                f'<div class="product-page">\n<h2 class="title-x">{name}</h2>\n'
                f'<div class="cost-box"><b>{price}</b></div>\n'
                f'<span class="sku">SKU-{pid:05d}</span>\n'
                f'<div class="description">{desc}</div>\n</div>'
            )
        else:
            body = (
                f'<div class="product-page">\n<h1 class="name">{name}</h1>\n'
                f'<p class="price">{price}</p>\n'
                f'<span class="sku">SKU-{pid:05d}</span>\n'
                f'<div class="description">{desc}</div>\n</div>'
            )
        return _page(f["name"], body)


def _make_handler(site: DemoSite) -> type[BaseHTTPRequestHandler]:
    """Build a handler class bound to ``site`` (http.server instantiates handlers per request)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "FleetDemo/1"
        protocol_version = "HTTP/1.1"

        def _respond(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            site._count(path)
            delay = site.latency + site.path_latency.get(path, 0.0)
            if delay > 0:
                time.sleep(delay)
            status, headers, body = site.render(path)
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body:
                self.wfile.write(data)

        def setup(self) -> None:
            super().setup()
            site._track(self.connection, alive=True)

        def finish(self) -> None:
            site._track(self.connection, alive=False)
            super().finish()

        def do_GET(self) -> None:
            self._respond(send_body=True)

        def do_HEAD(self) -> None:
            self._respond(send_body=False)

        def log_message(self, format: str, *args: Any) -> None:
            """Stay quiet: request logging on stderr would drown test and worker output."""

    return Handler


def main(argv: list[str] | None = None) -> None:
    """``python -m scraper.devtools.demo_site --port 8000 --products 500``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve the Fleet demo catalogue on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--products", type=int, default=120)
    parser.add_argument("--per-page", type=int, default=20)
    parser.add_argument("--template", choices=TEMPLATES, default="v1")
    args = parser.parse_args(argv)
    site = DemoSite(
        n_products=args.products,
        per_page=args.per_page,
        host=args.host,
        port=args.port,
        template=args.template,
    )
    site.start()
    print(f"Fleet demo site: {site.start_url} ({site.n_products} products)", flush=True)
    site.serve_forever()


if __name__ == "__main__":
    main()

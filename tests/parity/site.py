"""The parity suite's local site: a small documentation site, sitemaps, feeds, a login form, redirects,
per-jar session cookies, and a closed port for connection errors.

Why one deterministic site: the same spider runs under plain Scrapy and under Fleet against it, and the
two item sets are compared; every page is a pure function of its path (and, for /members/, the session
cookie), so any difference comes from the crawler, never from the site. A stdlib ThreadingHTTPServer on
127.0.0.1, like tests/hostile.py.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["DOC_PAGES", "ParitySite"]

DOC_PAGES = 12
SESSION = "s3cr3t-session"


def _html(title: str, body: str, head: str = "") -> bytes:
    return f"<html><head><title>{title}</title>{head}</head><body><h1>{title}</h1>{body}</body></html>".encode()


def _doc(n: int) -> bytes:
    """Doc page n links to the next two pages, back to the index (the start URL), to a page
    process_links drops (/docs/skip/), to an anchor of itself and off-site."""
    links = [f'<a href="/docs/p{m}">page {m}</a>' for m in (n + 1, n + 2) if m <= DOC_PAGES]
    links += ['<a href="/docs/">index</a>', f'<a href="/docs/skip/{n}">skip</a>', f'<a href="#top{n}">top</a>',
              '<a href="http://elsewhere.invalid/x">off-site</a>']
    return _html(f"Doc {n}", f"<p class='words'>{n * 7} words</p>" + " ".join(links))


def _sitemap(urls: list[str]) -> bytes:
    body = "".join(f"<url><loc>{u}</loc></url>" for u in urls)
    return f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>'.encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._route(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._route(self.rfile.read(length) if length else b"")

    def _route(self, body: bytes) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        base = self.server.base
        with self.server.lock:
            self.server.hits.append((self.command, self.path))
        if path == "/docs/":
            links = " ".join(f'<a href="/docs/p{n}">page {n}</a>' for n in (1, 2))
            return self._send(200, _html("Docs index", links + ' <a href="/docs/p1?ref=index">p1 again</a>'))
        if path.startswith("/docs/p") and path[7:].isdigit() and 1 <= int(path[7:]) <= DOC_PAGES:
            return self._send(200, _doc(int(path[7:])))
        if path.startswith("/docs/skip/"):
            return self._send(200, _html("Skipped", "process_links should have dropped this"))
        if path == "/robots.txt":
            return self._send(200, f"User-agent: *\nDisallow:\nSitemap: {base}/sitemap.xml\n".encode(), "text/plain")
        if path == "/sitemap.xml":
            idx = "".join(f"<sitemap><loc>{base}/{s}</loc></sitemap>" for s in ("sitemap-docs.xml", "sitemap-blog.xml.gz"))
            return self._send(200, f'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                                   f"{idx}</sitemapindex>".encode(), "application/xml")
        if path == "/sitemap-docs.xml":
            return self._send(200, _sitemap([f"{base}/docs/p{n}" for n in range(1, 6)]), "application/xml")
        if path == "/sitemap-blog.xml.gz":
            data = gzip.compress(_sitemap([f"{base}/blog/{n}" for n in range(1, 5)] + [f"{base}/about"]), mtime=0)
            return self._send(200, data, "application/x-gzip")
        if path.startswith("/blog/") or path == "/about":
            return self._send(200, _html(f"Post {path}", f"<p class='author'>author-{len(path)}</p>"))
        if path == "/feed.xml":
            items = "".join(f"<item><title>Story {n}</title><link>{base}/blog/{n}</link><cat>c{n % 2}</cat></item>"
                            for n in range(1, 6))
            return self._send(200, f'<?xml version="1.0"?><rss><channel>{items}</channel></rss>'.encode(), "application/rss+xml")
        if path == "/feed.csv":
            rows = "id;name;price\n" + "".join(f"{n};widget {n};{n * 1.5}\n" for n in range(1, 6))
            return self._send(200, rows.encode(), "text/csv")
        if path == "/api/echo":
            return self._send(200, json.dumps({
                "method": self.command, "ctype": self.headers.get("Content-Type", ""),
                "body": body.decode("utf-8", "replace"), "query": parts.query,
            }, sort_keys=True).encode(), "application/json")
        if path == "/list":
            page = int(query.get("page", ["1"])[0])
            links = " ".join(f'<a class="item" href="/item/{page}-{i}">item {i}</a>' for i in range(1, 4))
            nxt = f'<a class="next" href="/list?page={page + 1}">next</a>' if page < 4 else ""
            return self._send(200, _html(f"List {page}", links + nxt))
        if path.startswith("/item/"):
            return self._send(200, _html(f"Item {path[6:]}", f"<span class='price'>{len(path) * 3}.50</span>"))
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            return self._send(code, _html(f"Status {code}", f"<p>{code}</p>"))
        if path.startswith("/redirect/"):  # /redirect/N[?to=NAME]: N hops to /landed/NAME (default redirect)
            n = int(path.split("/")[2])
            to = query.get("to", [""])[0]
            target = f"/redirect/{n - 1}" + (f"?to={to}" if to else "") if n > 1 else f"/landed/{to or 'redirect'}"
            return self._send(302, b"", headers={"Location": target})
        if path == "/refresh":
            return self._send(200, _html("Refresh", "wait", '<meta http-equiv="refresh" content="0; url=/landed/refresh">'))
        if path.startswith("/landed/"):
            return self._send(200, _html(f"Landed {path[8:]}", "here"))
        if path == "/login":
            if self.command == "POST":
                form = parse_qs(body.decode())
                if form.get("user") == ["alice"] and form.get("password") == ["wonderland"] \
                        and form.get("csrf") == ["tok-123"]:
                    return self._send(302, b"", headers={"Location": "/members/",
                                                         "Set-Cookie": f"session={SESSION}; Path=/"})
                return self._send(200, _html("Login failed", "bad credentials"))
            form_html = ('<form action="/login" method="post"><input type="hidden" name="csrf" value="tok-123">'
                         '<input name="user"><input name="password" type="password"></form>')
            return self._send(200, _html("Login", form_html))
        if path == "/jar/start":  # a session per cookie jar: the cookie names the jar that asked for it
            name = query.get("name", ["?"])[0]
            return self._send(200, _html(f"Jar {name}", '<a href="/jar/check">check</a>'),
                              headers={"Set-Cookie": f"jar={name}; Path=/jar/"})
        if path == "/jar/check":
            jars = [c.strip()[4:] for c in (self.headers.get("Cookie") or "").split(";") if c.strip().startswith("jar=")]
            return self._send(200, _html("Jar check", f"<p class='session'>{','.join(jars) or 'none'}</p>"))
        if path.startswith("/members/"):
            who = "alice" if f"session={SESSION}" in (self.headers.get("Cookie") or "") else "anonymous"
            links = " ".join(f'<a href="/members/{n}">m{n}</a>' for n in range(1, 4)) if path == "/members/" else ""
            return self._send(200, _html(f"Members {path[9:] or 'home'}", f"<p class='who'>{who}</p>{links}"))
        return self._send(404, _html("Not found", path))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    base = ""
    lock: threading.Lock
    hits: list[tuple[str, str]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer: nothing the comparison depends on


class ParitySite:
    """start()/stop(); ``base`` is ``http://127.0.0.1:PORT``; ``hits`` records (method, path) of every request.

    ``closed`` is ``http://127.0.0.1:PORT`` of a port that refuses connections: a socket bound to it and
    never listening, so no other process can take the port while the site lives (a port merely found free
    could be reused and answer)."""

    def __init__(self) -> None:
        self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._closed.bind(("127.0.0.1", 0))
        self.closed = f"http://127.0.0.1:{self._closed.getsockname()[1]}"
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.lock = threading.Lock()
        self._server.hits = []
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server.base = self.base
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def hits(self) -> list[tuple[str, str]]:
        with self._server.lock:
            return list(self._server.hits)

    def start(self) -> ParitySite:
        self._thread.start()
        return self

    def env(self) -> dict[str, str]:
        """What the corpus spiders read the site's addresses from (tests.parity.corpus)."""
        return {"PARITY_BASE": self.base, "PARITY_CLOSED": self.closed}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._closed.close()

"""Hostile test servers on loopback: authenticated forward proxies and a site that fights back.

Why real servers: the failure taxonomy is about what goes over the wire (status codes, challenge
bodies, Retry-After, resets, timeouts, which proxy carried a request). Every server here is a stdlib
``ThreadingHTTPServer`` on 127.0.0.1 with daemon threads, started and stopped by the test.

* :class:`ForwardProxy` — an HTTP forward proxy (absolute-URI GETs, the way Scrapy sends plain-http
  requests through an http proxy). It checks ``Proxy-Authorization`` when it has credentials, tags each
  request it carries with ``X-Test-Proxy: <name>`` and relays the origin's answer. When the origin
  resets the connection, the proxy resets the client connection too. Hostnames ending in ``.test``
  (RFC 6761) and ``localhost`` resolve to 127.0.0.1 inside the proxy, so one loopback site can play
  several target domains (the fleet never resolves target hosts itself when it goes through a proxy).
* :class:`HostileSite` — routes by path (``/ok/N``, ``/ban-by-proxy/N``, ``/captcha/N``, ``/rate/N``,
  ``/flaky503/N``, ``/gone/N``, ``/missing/N``, ``/auth/N``, ``/reset/N``, ``/slow/N``) and records every
  hit (path, host, proxy tag, monotonic and wall-clock time, status). Hostile content (issue #14):
  redirect loops (``/loop/N`` to itself, ``/pingpong/N/a`` <-> ``/b``, ``/chain/N/K`` without end),
  compression bombs (``/bomb/{gzip,deflate,br,zstd}/N``: a few KB to 256 MiB - 1 GiB of zeros), corrupt
  encodings (``/corrupt/{gzip,deflate,br,zstd}/N``), a healthy gzip page (``/gzip-ok/N``), a 1 GiB body
  announced by Content-Length (``/huge/N``), a body without length that never ends (``/endless/N``), a
  slowloris (``/slowloris/N``: one byte every 0.5 s), 10,000 headers (``/headers/N``) and a page of links
  (``/links/N``: ``link_targets``).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailers", "transfer-encoding", "upgrade", "content-length",
}

CHALLENGE_BODY = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    b"<div id=\"challenge-stage\">Checking your browser before accessing the site.</div>"
    b"<script src=\"/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1?ray=8a1b2c3d\"></script>"
    b"</body></html>"
)


def _reset(sock: socket.socket, rfile: Any = None) -> None:
    """Abort a TCP connection: SO_LINGER 0 then close sends RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    if rfile is not None:
        try:
            rfile.close()  # the makefile() reference keeps the fd open otherwise
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken pipes after a client timeout are expected; keep test output clean


class _Base:
    """start()/stop() and a context manager around one server thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.httpd: _Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Any:
        self.httpd = _Server(("127.0.0.1", 0), self._make_handler())
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name=f"{type(self).__name__}-{self.port}")
        self.thread.start()
        return self

    def stop(self) -> None:
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# forward proxy
# --------------------------------------------------------------------------------------------


class ForwardProxy(_Base):
    """An authenticating HTTP forward proxy that tags what it carries with ``X-Test-Proxy``."""

    def __init__(self, name: str, user: str | None = None, password: str | None = None,
                 *, hosts: dict[str, str] | None = None, upstream_timeout: float = 30.0) -> None:
        super().__init__()
        self.name = name
        self.user = user
        self.password = password
        self.hosts = {"localhost": "127.0.0.1", **(hosts or {})}
        self.upstream_timeout = upstream_timeout
        self.lock = threading.Lock()
        self.requests = 0  # every request received (including 407s)
        self.forwarded = 0  # requests carried to an origin
        self.auth_failures = 0

    @property
    def url(self) -> str:
        """``http://user:pass@127.0.0.1:PORT`` (credentials included: FLEET_PROXIES material)."""
        cred = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"http://{cred}127.0.0.1:{self.port}"

    @property
    def expected_auth(self) -> str | None:
        if self.user is None:
            return None
        token = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode("ascii")
        return f"Basic {token}"

    def resolve(self, host: str) -> str:
        host = host.lower()
        if host in self.hosts:
            return self.hosts[host]
        if host.endswith(".test"):
            return "127.0.0.1"
        return host

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _plain(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response_only(status)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with proxy.lock:
                    proxy.requests += 1
                expected = proxy.expected_auth
                if expected is not None and self.headers.get("Proxy-Authorization") != expected:
                    with proxy.lock:
                        proxy.auth_failures += 1
                    self._plain(407, b"proxy authentication required",
                                {"Proxy-Authenticate": 'Basic realm="test-proxy"'})
                    return
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self._plain(400, b"absolute http URI required")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["X-Test-Proxy"] = proxy.name
                path = target.path or "/"
                if target.query:
                    path += "?" + target.query
                conn = http.client.HTTPConnection(proxy.resolve(target.hostname), target.port or 80,
                                                  timeout=proxy.upstream_timeout)
                try:
                    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders()
                    resp = conn.getresponse()
                    body = resp.read()
                except (TimeoutError, ConnectionError, http.client.HTTPException, OSError):
                    # the origin reset or stalled: the client sees the same (a reset)
                    conn.close()
                    self.close_connection = True
                    _reset(self.connection, self.rfile)
                    return
                finally:
                    with proxy.lock:
                        proxy.forwarded += 1
                conn.close()
                try:
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True

        return Handler


# --------------------------------------------------------------------------------------------
# hostile site
# --------------------------------------------------------------------------------------------


MiB = 1 << 20
_BOMBS: dict[str, bytes] = {}
_BOMB_LOCK = threading.Lock()


def bomb(encoding: str) -> bytes:
    """A compression bomb of zeros (built once per process): gzip 1 GiB in ~1 MB (64 concatenated gzip
    members), deflate 256 MiB in ~260 KB, br 1 GiB in ~1.5 KB, zstd 1 GiB in ~32 KB."""
    with _BOMB_LOCK:
        if encoding not in _BOMBS:
            zero = bytes(MiB)
            if encoding == "gzip":
                _BOMBS[encoding] = gzip.compress(bytes(16 * MiB), 9) * 64
            elif encoding == "deflate":
                c = zlib.compressobj(9)
                _BOMBS[encoding] = b"".join([c.compress(zero) for _ in range(256)] + [c.flush()])
            elif encoding == "br":
                import brotli

                b = brotli.Compressor(quality=5)
                _BOMBS[encoding] = b"".join([b.process(zero) for _ in range(1024)] + [b.finish()])
            elif encoding == "zstd":
                from backports import zstd

                z = zstd.ZstdCompressor(level=3)
                _BOMBS[encoding] = b"".join([z.compress(zero) for _ in range(1024)] + [z.flush()])
            else:
                raise ValueError(encoding)
        return _BOMBS[encoding]


# bodies that say they are in an encoding and are not (gzip: not even the magic number)
CORRUPT = {
    "gzip": b"this is not gzip at all " * 20,
    "deflate": b"\x78\x9c" + b"\xff" * 300,
    "br": b"\xff\xfe\xfd not brotli " * 20,
    "zstd": b"\x28\xb5\x2f\xfd" + b"\x00\xff" * 200,
}


@dataclass(frozen=True)
class Hit:
    path: str
    host: str  # the Host header's hostname (the target domain the client meant)
    proxy: str | None  # X-Test-Proxy: which proxy carried it (None = direct)
    t: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    status: int | None  # what the site answered (None: reset / timed out)


class HostileSite(_Base):
    """A site that bans proxies, rate-limits, serves challenges, flaps, resets and stalls.

    ``banned``: proxy tags answered 403 on ``/ban-by-proxy/N`` — for every host, or only for the hosts
    in ``ban_hosts`` when that is given. ``rate_k`` / ``flaky_k``: how many times each ``/rate/N`` /
    ``/flaky503/N`` path answers 429 / 503 before it serves the page. ``slow_s``: how long ``/slow/N``
    stalls before answering (make it longer than the client's DOWNLOAD_TIMEOUT).
    """

    def __init__(self, *, banned: set[str] | None = None, ban_hosts: set[str] | None = None,
                 rate_k: int = 1, retry_after: int = 7, flaky_k: int = 1, slow_s: float = 4.0,
                 link_targets: list[str] | None = None, stream_cap: int = 2 * 1024 * MiB,
                 slowloris_s: float = 60.0) -> None:
        super().__init__()
        self.link_targets = list(link_targets or [])
        self.stream_cap = stream_cap  # /huge and /endless stop writing after this many bytes
        self.slowloris_s = slowloris_s  # /slowloris gives up after this long
        self.sent_bytes: dict[str, int] = {}  # path -> body bytes written (the streaming routes)
        self.banned = set(banned or ())
        self.ban_hosts = set(ban_hosts) if ban_hosts is not None else None
        self.rate_k = rate_k
        self.retry_after = retry_after
        self.flaky_k = flaky_k
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.hits: list[Hit] = []
        self._served: dict[str, int] = {}  # path -> times answered (for the K-times routes)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits_for(self, path: str | None = None, *, host: str | None = None, proxy: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if (path is None or h.path == path) and (host is None or h.host == host)
                    and (proxy is None or h.proxy == proxy)]

    def _count(self, path: str) -> int:
        with self.lock:
            n = self._served.get(path, 0)
            self._served[path] = n + 1
            return n

    def is_banned(self, proxy: str | None, host: str) -> bool:
        if proxy is None or proxy not in self.banned:
            return False
        return self.ban_hosts is None or host in self.ban_hosts

    @staticmethod
    def page(token: str) -> bytes:
        return (f"<html><head><title>t</title></head><body><h1 class=\"token\">{token}</h1>"
                f"<p>hello</p></body></html>").encode()

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self, status: int | None) -> None:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
                hit = Hit(self.path.split("?", 1)[0], host, self.headers.get("X-Test-Proxy"),
                          time.monotonic(), time.time(), status)
                with site.lock:
                    site.hits.append(hit)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self._record(status)
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    self.close_connection = True

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                parts = path.strip("/").split("/")
                kind = parts[0] if parts else ""
                n = parts[1] if len(parts) > 1 else "0"
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
                proxy_tag = self.headers.get("X-Test-Proxy")
                if kind == "ok":
                    self._send(200, site.page(f"ok-{n}"))
                elif kind == "ban-by-proxy":
                    if site.is_banned(proxy_tag, host):
                        self._send(403, b"<html><body>Access denied</body></html>")
                    else:
                        self._send(200, site.page(f"ban-{n}"))
                elif kind == "captcha":
                    self._send(200, CHALLENGE_BODY)
                elif kind == "rate":
                    if site._count(path) < site.rate_k:
                        self._send(429, b"<html><body>Too many requests</body></html>",
                                   {"Retry-After": str(site.retry_after)})
                    else:
                        self._send(200, site.page(f"rate-{n}"))
                elif kind == "flaky503":
                    if site._count(path) < site.flaky_k:
                        self._send(503, b"<html><body>Service unavailable</body></html>")
                    else:
                        self._send(200, site.page(f"flaky-{n}"))
                elif kind == "gone":
                    self._send(410, b"<html><body>Gone</body></html>")
                elif kind == "missing":
                    self._send(404, b"<html><body>Not found</body></html>")
                elif kind == "auth":
                    self._send(401, b"<html><body>Unauthorized</body></html>",
                               {"WWW-Authenticate": 'Basic realm="members"'})
                elif kind == "reset":
                    self._record(None)
                    self.close_connection = True
                    _reset(self.connection, self.rfile)
                elif kind in {"loop", "pingpong", "chain", "bomb", "corrupt", "gzip-ok", "huge", "endless",
                              "slowloris", "headers", "links"}:
                    self._hostile(kind, parts, path)
                elif kind == "slow":
                    self._record(None)
                    time.sleep(site.slow_s)
                    self.close_connection = True
                    try:
                        body = site.page(f"slow-{n}")
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    except OSError:
                        pass
                else:
                    self._send(404, b"no such route")

            def _redirect(self, location: str) -> None:
                self._record(302)
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _stream(self, path: str, length: int | None) -> None:
                """200 with a body of zeros: ``length`` announced (or none, closed when done), written in
                256 KiB chunks until the client goes away or ``stream_cap`` is reached."""
                self._record(200)
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.send_header("Connection", "close")
                self.end_headers()
                chunk, sent = bytes(256 * 1024), 0
                try:
                    while sent < min(site.stream_cap, length if length is not None else site.stream_cap):
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
                with site.lock:
                    site.sent_bytes[path] = site.sent_bytes.get(path, 0) + sent

            def _hostile(self, kind: str, parts: list[str], path: str) -> None:
                n = parts[1] if len(parts) > 1 else "0"
                if kind == "loop":
                    self._redirect(path)
                elif kind == "pingpong":
                    self._redirect(f"/pingpong/{n}/{'b' if parts[-1] == 'a' else 'a'}")
                elif kind == "chain":
                    self._redirect(f"/chain/{n}/{int(parts[2]) + 1 if len(parts) > 2 else 1}")
                elif kind in {"bomb", "corrupt"}:
                    encoding = n
                    body = bomb(encoding) if kind == "bomb" else CORRUPT[encoding]
                    self._send(200, body, {"Content-Encoding": encoding})
                elif kind == "gzip-ok":
                    self._send(200, gzip.compress(site.page(f"gzip-{n}")), {"Content-Encoding": "gzip"})
                elif kind == "huge":
                    self._stream(path, 1024 * MiB)
                elif kind == "endless":
                    self._stream(path, None)
                elif kind == "slowloris":
                    self._record(200)
                    self.close_connection = True
                    deadline = time.monotonic() + site.slowloris_s
                    try:
                        self.send_response(200)
                        self.send_header("Content-Length", "100000")
                        self.end_headers()
                        while time.monotonic() < deadline:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                elif kind == "headers":
                    body = site.page(f"headers-{n}")
                    self._record(200)
                    self.send_response(200)
                    for i in range(10_000):
                        self.send_header(f"X-Hostile-{i}", "v" * 8)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        self.wfile.write(body)
                    except OSError:
                        self.close_connection = True
                elif kind == "links":
                    links = "".join(f'<a href="{u}">l</a>' for u in site.link_targets)
                    body = (f"<html><head><title>t</title></head><body><h1 class=\"token\">links-{n}</h1>"
                            f"{links}</body></html>").encode()
                    self._send(200, body)

        return Handler

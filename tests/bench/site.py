"""A static copy of the demo catalogue served by nginx (or a non-Python fallback) on loopback.

The pages are rendered once with ``scraper.devtools.demo_site.DemoSite.render`` (the exact markup the
demo_shop spider is written for) into a temp dir, then served by a non-daemon nginx child with a
generated config: one worker process, access log off, keep-alive on. Python is never on the
serving path, so the crawler under test, not the site, should be the bottleneck.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from scraper.devtools.demo_site import DemoSite


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def generate(root: Path, n_products: int, per_page: int) -> DemoSite:
    """Write every list and product page of the demo site under ``root``; returns the model."""
    site = DemoSite(n_products=n_products, per_page=per_page)
    (root / "catalogue").mkdir(parents=True, exist_ok=True)
    (root / "product").mkdir(parents=True, exist_ok=True)
    for n in range(1, site.n_pages + 1):
        path = f"/catalogue/page-{n}.html"
        status, _, body = site.render(path)
        assert status == 200
        (root / path.lstrip("/")).write_text(body, encoding="utf-8")
    for pid in range(1, n_products + 1):
        path = f"/product/{pid}.html"
        status, _, body = site.render(path)
        assert status == 200
        (root / path.lstrip("/")).write_text(body, encoding="utf-8")
    # a tmpdir is 0700; nginx workers drop to nobody when the master runs as root
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)
    os.chmod(root.parent, 0o755)
    return site


NGINX_CONF = """\
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    open_file_cache max=8000 inactive=60s;  # cached fds stay well under the fd limit (20,000 here)
    types {{ text/html html; }}
    default_type text/html;
    charset utf-8;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location = / {{ return 302 /catalogue/page-1.html; }}
    }}
}}
"""


class StaticServer:
    """nginx (preferred) or busybox httpd / darkhttpd serving ``root`` on 127.0.0.1."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = ""
        self.version = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StaticServer:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if nginx:
            self.workdir.mkdir(parents=True, exist_ok=True)
            conf = self.workdir / "nginx.conf"
            user = "user root;" if os.geteuid() == 0 else ""
            conf.write_text(NGINX_CONF.format(prefix=self.workdir, port=self.port, root=self.root, user=user))
            self.kind = "nginx"
            self.version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
            self.proc = subprocess.Popen(
                [nginx, "-p", str(self.workdir), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=open(self.workdir / "nginx.stderr", "wb"),
            )
        elif shutil.which("darkhttpd"):
            self.kind = "darkhttpd"
            self.proc = subprocess.Popen(
                ["darkhttpd", str(self.root), "--addr", "127.0.0.1", "--port", str(self.port), "--no-listing"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        elif shutil.which("busybox"):
            self.kind = "busybox httpd"
            self.proc = subprocess.Popen(
                ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{self.port}", "-h", str(self.root)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        else:
            raise RuntimeError("no static HTTP server: install nginx (apt-get install nginx-light)")
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pids(self) -> list[int]:
        """Master and worker pids (for CPU accounting of the site)."""
        import psutil

        if self.proc is None:
            return []
        try:
            p = psutil.Process(self.proc.pid)
            return [p.pid] + [c.pid for c in p.children(recursive=True)]
        except psutil.Error:
            return []

"""A spider's own per-domain limit is what the server sees (issue #17: `fleet worker` used to override it).

The site counts requests in flight at once; each page takes 0.2 s so that concurrent fetches overlap.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fleetproc import fleet_json, spider_module_env, start_worker, wait_all

SPIDER = '''
import scrapy

class OneAtATime(scrapy.Spider):
    name = "one_at_a_time"
    custom_settings = {"CONCURRENT_REQUESTS_PER_DOMAIN": 1}

    def parse(self, response):
        yield {"path": response.url}
'''


class _CountingSite:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.hits = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with site.lock:
                    site.now += 1
                    site.hits += 1
                    site.peak = max(site.peak, site.now)
                time.sleep(0.2)
                with site.lock:
                    site.now -= 1
                body = b"<html><body>ok</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_spider_per_domain_limit_is_kept_by_the_worker(redis_url: str, tmp_path: Path) -> None:
    site = _CountingSite()
    try:
        env = spider_module_env(redis_url, tmp_path, "polite_spiders", SPIDER)
        urls = [a for i in range(8) for a in ("--url", f"{site.base}/p/{i}")]
        assert fleet_json("seed", "one_at_a_time", "--run", "r1", *urls, env=env)["enqueued"] == 8
        proc = start_worker("one_at_a_time", env, tmp_path / "w.log", "--concurrency", "8", "--until-idle", "1")
        assert wait_all([proc], 90) == [0]
        assert site.hits == 8
        assert site.peak == 1, f"{site.peak} requests in flight at once to one domain; the spider asked for 1"
    finally:
        site.stop()

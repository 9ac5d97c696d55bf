"""Pages built by JavaScript, crawled through headless Chromium (scraper.worker.render) by real workers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests import loopback
from tests.fleetproc import counts, fleet, fleet_env, fleet_json, objects, spider_module_env, start_worker, wait_all
from tests.hostile import ForwardProxy

pytestmark = pytest.mark.integration

N = 6
SPEC = """
name: jsshop
render: {render}
start_urls: ["{base}/list.html"]
pages:
  list:
    follow:
      - {{css: "a.product::attr(href)", page: product}}
  product:
    fields:
      name: {{css: "h1.name::text", required: true}}
      price: {{css: "p.price::text", required: true, type: float}}
"""


def _js(body: str) -> bytes:
    """A page whose HTML exists only after its script ran: without a browser, there is nothing."""
    return (f"<!DOCTYPE html><html><head><title>js</title></head><body><noscript>enable JS</noscript>"
            f"<script>document.body.innerHTML = {body!r};</script></body></html>").encode()


SEEN_HEADERS: list[dict[str, str]] = []  # what the site received, one entry a request


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        SEEN_HEADERS.append({k.lower(): v for k, v in self.headers.items()})
        if self.path == "/list.html":
            body = _js("".join(f'<a class="product" href="/p/{i}.html">p{i}</a>' for i in range(1, N + 1)))
        elif self.path.startswith("/late/"):  # the content comes a second after the load event
            i = int(self.path.split("/")[-1].split(".")[0])
            body = (f"<!DOCTYPE html><html><body><script>setTimeout(function () {{ document.body.innerHTML = "
                    f"'<h1 class=\"name\">Late {i}</h1>'; }}, 1000);</script></body></html>").encode()
        elif self.path.startswith("/p/"):
            i = int(self.path.split("/")[-1].split(".")[0])
            body = _js(f'<h1 class="name">Widget {i}</h1><p class="price">{i}.50</p>')
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def js_site() -> Iterator[str]:
    SEEN_HEADERS.clear()
    srv = loopback.serve(_Handler)
    try:
        yield loopback.base_url(srv)
    finally:
        loopback.stop(srv)


@pytest.mark.timeout(180)
def test_rendered_spec_extracts_what_javascript_builds(redis_url: str, tmp_path: Path, js_site: str) -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no Chromium on PATH (make test installs Debian's chromium)")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "jsshop.yaml").write_text(SPEC.format(render="true", base=js_site))
    env = fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(specs))
    listing = {s["name"]: s for s in fleet_json("spiders", "--json", env=env)}
    assert listing["jsshop"]["render_js"] is True
    assert fleet_json("seed", "jsshop", "--run", "j1", env=env)["enqueued"] == 1
    log = tmp_path / "w.log"
    assert wait_all([start_worker("jsshop", env, log, "--until-idle", "2", "--concurrency", "4")], 150) == [0], \
        log.read_text()[-3000:]
    items = objects(tmp_path / "data", "items", "jsshop", "j1")
    got = sorted((v[0]["name"], v[0]["price"]) for v in items.values())
    assert got == [(f"Widget {i}", i + 0.5) for i in range(1, N + 1)]
    assert counts(redis_url, "jsshop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}

    # the same spec without rendering: the product pages are empty shells, which is drift (C), not items
    (specs / "jsshop.yaml").write_text(SPEC.format(render="false", base=js_site))
    fleet_json("seed", "jsshop", "--run", "j2", "--url", f"{js_site}/p/1.html", "--callback", "parse_product",
               env=env)
    assert wait_all([start_worker("jsshop", env, tmp_path / "w2.log", "--until-idle", "2")], 60) == [0]
    assert objects(tmp_path / "data", "items", "jsshop", "j2") == {}
    assert objects(tmp_path / "data", "evidence", "jsshop", "j2")


def test_rendering_spider_without_chromium_fails_with_what_to_install(redis_url: str, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "jsshop.yaml").write_text(SPEC.format(render="true", base="http://127.0.0.1:9"))
    env = fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(specs), FLEET_CHROMIUM=str(tmp_path / "nochrome"))
    res = fleet("worker", "jsshop", "--until-idle", "1", env=env)
    assert res.returncode == 1
    assert "FLEET_CHROMIUM" in res.stderr and "not an executable file" in res.stderr


@pytest.mark.timeout(180)
def test_rendered_pages_go_through_the_proxy_chosen_for_them(redis_url: str, tmp_path: Path, js_site: str) -> None:
    """FLEET_PROXIES applies to rendered pages too: the browser context of the chosen proxy fetches
    them, answers the proxy's 407 itself, and the proxy credentials never reach the site."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no Chromium on PATH (make test installs Debian's chromium)")
    port = js_site.rsplit(":", 1)[1]
    base = f"http://shop.test:{port}"  # resolvable only by the proxy (*.test -> 127.0.0.1)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "jsshop.yaml").write_text(SPEC.format(render="true", base=base))
    with ForwardProxy("p1", user="fleet", password="s3cr3t-pw") as proxy:
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(specs), FLEET_PROXIES=proxy.url)
        assert fleet_json("seed", "jsshop", "--run", "px", env=env)["enqueued"] == 1
        log = tmp_path / "w.log"
        assert wait_all([start_worker("jsshop", env, log, "--until-idle", "2", "--concurrency", "4")], 150) == [0], \
            log.read_text()[-3000:]
        forwarded = proxy.forwarded
    items = objects(tmp_path / "data", "items", "jsshop", "px")
    got = sorted((v[0]["name"], v[0]["price"]) for v in items.values())
    assert got == [(f"Widget {i}", i + 0.5) for i in range(1, N + 1)], log.read_text()[-3000:]
    assert counts(redis_url, "jsshop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 0}
    pages = [h for h in SEEN_HEADERS if h.get("host", "").startswith("shop.test")]
    assert len(pages) >= N + 1 and forwarded >= N + 1
    assert all(h.get("x-test-proxy") == "p1" for h in pages), pages  # every page came through the proxy
    assert not any("proxy-authorization" in h for h in SEEN_HEADERS)
    assert "s3cr3t-pw" not in log.read_text()
    assert "s3cr3t-pw" not in "".join(p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*.json*"))


LATE_SPIDER = """
    import scrapy
    from scrapy_playwright.page import PageMethod

    class LateJs(scrapy.Spider):
        name = "late_js"
        custom_settings = {"DOWNLOAD_HANDLERS": {
            "http": "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler",
            "https": "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"}}

        async def start(self):
            for i in range(3):
                yield scrapy.Request(f"{self.base}/late/{i}.html", meta={
                    "playwright": True, "playwright_page_methods": [PageMethod("wait_for_selector", "h1.name")]})

        def parse(self, response):
            yield {"name": response.css("h1.name::text").get()}
"""


@pytest.mark.timeout(180)
def test_scrapy_playwright_page_methods_travel_through_the_queue(redis_url: str, tmp_path: Path, js_site: str) -> None:
    """A spider on scrapy-playwright's own handler that waits for its content (PageMethod) still waits under
    Fleet: the page methods are queued as JSON (scraper.queue.pagemethods), not dropped as objects."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no Chromium on PATH (make test installs Debian's chromium)")
    env = spider_module_env(redis_url, tmp_path, "late_js_spiders", LATE_SPIDER)
    summary = fleet_json("run", "late_js", "--run", "pm", "-a", f"base={js_site}", "--workers", "1", env=env,
                         timeout=150)
    assert summary["done"] == 3 and summary["dlq"] == 0 and summary["parked"] == 0, summary
    names = sorted(v[0]["name"] for v in objects(tmp_path / "data", "items", "late_js", "pm").values())
    assert names == ["Late 0", "Late 1", "Late 2"]

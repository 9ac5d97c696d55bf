"""Pages rendered in headless Chromium (scrapy-playwright), for targets that build their HTML in JavaScript.

A spider opts in with ``render_js = True`` (every request of it is rendered; a YAML spec says
``render: true``), or per request with scrapy-playwright's own ``meta={"playwright": True}`` once the
spider uses scrapy-playwright's download handler (its ``custom_settings``, as scrapy-playwright's docs
show). Either way the worker runs :class:`FleetPlaywrightDownloadHandler`: scrapy-playwright's handler
with Twisted's hidden automatic retry switched off for the plain HTTP requests it passes through (as
``scraper.worker.download``), and Chromium launched from the machine's own binary, since browser downloads are
neither possible nor wanted on a worker (``FLEET_CHROMIUM``, else ``chromium`` / ``chromium-browser``
/ ``google-chrome`` on PATH). A rendered response goes through the same classifier, drift checks, writes
and acks as any other; Playwright's timeouts and navigation errors are class A.

With ``FLEET_PROXIES``, a rendered request goes through the proxy ProxyMiddleware chose for it, as any
other request: a browser context has one proxy, so each proxy gets a context of its own
(``fleet-proxy-<id>``), created on first use with Playwright's ``proxy`` option. The browser answers
the proxy's authentication challenge itself; the ``Proxy-Authorization`` header Scrapy's
HttpProxyMiddleware adds is removed from the page request (inside an HTTPS tunnel it would reach the
site). Credentials never enter ``meta``, logs or the context's name. A request whose spider names its
own ``playwright_context`` keeps it, and that context's proxy settings (none: direct).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from scrapy import Spider
from scrapy.http import Request, Response
from scrapy.settings import Settings
from scrapy_playwright.handler import ScrapyPlaywrightDownloadHandler

from scraper.worker.download import TimerSweep
from scraper.worker.ports import fleet_of

__all__ = [
    "CHROMIUM_ARGS",
    "HANDLER",
    "PROXY_CONTEXT",
    "ChromiumNotFound",
    "FleetPlaywrightDownloadHandler",
    "apply",
    "chromium_path",
]

# Chromium on a server: no sandbox (workers run as root in containers), no GPU, and none of the
# background traffic a closed network refuses (component updates, sync, field trials).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HANDLER = "scraper.worker.render.FleetPlaywrightDownloadHandler"
PROXY_CONTEXT = "fleet-proxy-"  # + proxy id: the browser context of one proxy


class ChromiumNotFound(RuntimeError):
    pass


def chromium_path(configured: str | None = None) -> str:
    """The Chromium binary workers launch: FLEET_CHROMIUM, else the first known name on PATH."""
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise ChromiumNotFound(f"FLEET_CHROMIUM={configured}: not an executable file")
        return configured
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumNotFound(
        "this spider renders pages in Chromium, but no Chromium was found on PATH: install it "
        "(Debian/Ubuntu: apt-get install chromium) or set FLEET_CHROMIUM to its path"
    )


def apply(spidercls: type[Spider], settings: Settings) -> None:
    """Worker settings for a rendering spider: Fleet's handler for http(s), Chromium launch options
    (kept when the spider sets its own), the asyncio reactor scrapy-playwright needs."""
    handlers = dict(settings.getdict("DOWNLOAD_HANDLERS"))
    handlers["http"] = handlers["https"] = HANDLER
    settings.set("DOWNLOAD_HANDLERS", handlers, priority="cmdline")
    custom: dict[str, Any] = dict(getattr(spidercls, "custom_settings", None) or {})
    if not custom.get("PLAYWRIGHT_CDP_URL") and not custom.get("PLAYWRIGHT_CONNECT_URL"):
        launch = dict(custom.get("PLAYWRIGHT_LAUNCH_OPTIONS") or {})
        if "executable_path" not in launch:
            launch["executable_path"] = chromium_path(settings.get("FLEET_CHROMIUM"))
        launch.setdefault("headless", True)
        launch.setdefault("args", list(CHROMIUM_ARGS))
        settings.set("PLAYWRIGHT_LAUNCH_OPTIONS", launch, priority="cmdline")
    if not custom.get("PLAYWRIGHT_BROWSER_TYPE"):
        settings.set("PLAYWRIGHT_BROWSER_TYPE", "chromium", priority="cmdline")
    if settings.get("PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT") is None:
        # a page's navigation bounded by the spider's DOWNLOAD_TIMEOUT, as a plain fetch is (Playwright's own
        # 30 s otherwise: a stalled page, settled by the watchdog, kept its browser page that long, and the
        # requests behind it waited for one); the spider's own value of the setting still wins
        timeout = float(custom.get("DOWNLOAD_TIMEOUT") or settings.getfloat("DOWNLOAD_TIMEOUT") or 180)
        settings.set("PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT", timeout * 1000, priority="project")
    if "PLAYWRIGHT_MAX_PAGES_PER_CONTEXT" not in custom:
        # pages are costly: at most 8 open at once; the rest of the worker's requests wait for a page
        settings.set("PLAYWRIGHT_MAX_PAGES_PER_CONTEXT", min(8, settings.getint("CONCURRENT_REQUESTS")),
                     priority="cmdline")


#: Request meta the watchdog reads (scraper.worker.watchdog): waiting for a browser page, and when it got one.
PAGE_WAIT_KEY = "_fleet_page_wait"
PAGE_AT_KEY = "_fleet_page_at"


class FleetPlaywrightDownloadHandler(ScrapyPlaywrightDownloadHandler):  # type: ignore[misc]  # untyped
    """scrapy-playwright's handler; a ``render_js`` spider's requests all go to the browser."""

    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self._pool.retryAutomatically = False  # see scraper.worker.download
        # nor a re-fetch inside one delivery when the page target closed: that is a class A outcome
        self.config.target_closed_max_retries = 0
        spidercls = getattr(crawler, "spidercls", None)
        self.render_all = bool(getattr(spidercls, "render_js", False))
        self.fleet_crawler = crawler
        self._sweep = TimerSweep()  # plain requests through this handler arm timeouts too (scraper.worker.download)

    async def download_request(self, request: Request) -> Response:
        if self.render_all and not request.meta.get("playwright"):
            request.meta["playwright"] = True
        mine = PROXY_CONTEXT + str(request.meta["fleet_proxy_id"]) if request.meta.get("fleet_proxy_id") else None
        if request.meta.get("playwright") and mine:
            # the browser authenticates to the proxy (its context's proxy option); this header would
            # otherwise go out with the page request, to the site itself inside an HTTPS tunnel
            request.headers.pop(b"Proxy-Authorization", None)
            request.meta.setdefault("playwright_context", mine)
        ctx = request.meta.get("playwright_context")
        if ctx is not None and ctx != mine and \
                (not isinstance(ctx, str) or ctx.startswith(PROXY_CONTEXT) or
                 (ctx != "default" and ctx not in self.config.startup_context_kwargs)):
            # a proxy's context is the proxy middleware's choice, never the request's, and another context
            # one the spider declares (PLAYWRIGHT_CONTEXTS): an entry is input, and each new name would be
            # a new browser context (a queue of them, unbounded memory)
            request.meta["playwright_context"] = mine or "default"
        response: Response = await super().download_request(request)
        return response

    async def _create_page(self, request: Request, spider: Spider) -> Any:
        """The page, once one of the context's PLAYWRIGHT_MAX_PAGES_PER_CONTEXT is free: the stall
        watchdog counts the wait for it as queueing, and restarts its clock when the page is had."""
        request.meta[PAGE_WAIT_KEY] = True
        try:
            page = await super()._create_page(request, spider)
        finally:
            request.meta.pop(PAGE_WAIT_KEY, None)
        request.meta[PAGE_AT_KEY] = time.monotonic()
        return page

    async def _create_browser_context(self, name: str, context_kwargs: dict[str, Any] | None,
                                      spider: Spider | None = None) -> Any:
        """A ``fleet-proxy-<id>`` context is that proxy's: the proxy (with its credentials) comes from
        the worker's pool here, so it never travels in a request's meta."""
        if name.startswith(PROXY_CONTEXT):
            rt = fleet_of(self.fleet_crawler)
            proxy = rt.proxies.by_id.get(name[len(PROXY_CONTEXT):]) if rt is not None and rt.proxies else None
            if proxy is not None:
                context_kwargs = {**(context_kwargs or {}), "proxy": proxy.playwright()}
        return await super()._create_browser_context(name, context_kwargs, spider)

    async def close(self) -> None:
        self._sweep.stop()
        await super().close()

"""Downloader middleware: route each leased request through a healthy proxy for its target domain.

Why here and not in Scrapy's HttpProxyMiddleware: selection needs the fleet-wide health of every
(proxy, domain) pair and the proxies this request already burned. We only choose; Scrapy's
HttpProxyMiddleware (order 750, after us) still turns credentials into Proxy-Authorization.

Politeness keys on the target: ``download_slot`` is the target host, so per-domain concurrency and
delay follow the site, never the proxy a request happens to use.
"""

from __future__ import annotations

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.httpobj import urlparse_cached

from scraper.infra.config import FleetConfig
from scraper.queue.redisio import REDIS_ERRORS
from scraper.worker.ports import VOID_MESSAGE, fleet_of

__all__ = ["ProxyMiddleware"]


class ProxyMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ProxyMiddleware:
        if not FleetConfig.from_env().proxies:
            # no FLEET_PROXIES: Scrapy's own download slot is already the target host
            raise NotConfigured("FLEET_PROXIES is not set")
        return cls(crawler)

    async def process_request(self, request: Request) -> None:
        host = (urlparse_cached(request).hostname or "").lower()
        if host:
            request.meta["download_slot"] = host
        rt = fleet_of(self.crawler)
        if rt is None:
            return None
        if rt.drop_void(request):
            raise IgnoreRequest(VOID_MESSAGE)
        state = rt.state_for(request)
        if state is None or not rt.proxies:
            return None
        pool = rt.proxies
        if pool.stale(host):
            try:
                await pool.load(host)
            except REDIS_ERRORS:
                pass  # choose from what we knew; the health refresh retries next time
        # the proxies its failed attempts went through (a ban, or no answer): a retry goes through another
        exclude = [h["proxy"] for h in state.env.history if h.get("cls") in ("A", "B") and h.get("proxy")]
        proxy, until = pool.choose(host, exclude)
        if proxy is None:
            rt.defer(state, until, "all_proxies_cooling")
            raise IgnoreRequest("fleet: every proxy is cooling down for this domain")
        request.meta["proxy"] = proxy.url
        request.meta["fleet_proxy_id"] = proxy.id
        rt.proxy_chosen(state, proxy.id)
        pool.started(proxy.id)
        return None

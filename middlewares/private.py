"""Downloader middleware: with ``FLEET_ALLOW_PRIVATE=0``, never fetch a non-public address.

Why: a fleet follows links it found on pages it does not control. A link (or a redirect) to
``http://169.254.169.254/`` or ``http://10.0.0.5:6379/`` makes a worker request the cloud metadata
service or an internal service with its own network position (server-side request forgery). With the
guard on, a request whose host is, or resolves to, an address that is not globally routable (loopback,
private, link-local, shared, reserved, multicast, unspecified; IPv4-mapped IPv6 included) is never sent.
It is class D: one DLQ entry with the reason ``policy:private_address``, no retry. With the guard on,
only http and https URLs are fetched (``file://`` would read the worker's own files, ``s3://`` use its
credentials), and a name the check cannot resolve is a DNS error (class A, retried later), never let
through unchecked.

Redirects pass through here again (Scrapy re-sends the redirected request through every downloader
middleware), so a public page cannot bounce the worker to a private one. Limits: the check resolves the
name itself (results cached for ``CACHE_SECONDS``), so a DNS server that answers differently to the
connection a moment later (rebinding) is not caught; through a proxy, the proxy resolves the name;
and a rendered page's own subresource requests (JavaScript, images) are the browser's.

The default (``FLEET_ALLOW_PRIVATE=1``) switches the middleware off: the embedded demo and local test
sites are on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.error import DNSLookupError

from scraper.infra.config import FleetConfig

__all__ = ["CACHE_HOSTS", "CACHE_SECONDS", "PrivateAddressMiddleware", "PrivateAddressRefused", "non_public"]

_SCHEMES = frozenset({"http", "https"})
CACHE_SECONDS = 60.0  # how long a host's verdict is reused
CACHE_HOSTS = 10_000  # bound on remembered hosts (the oldest half is dropped when full)


class PrivateAddressRefused(Exception):
    """The request's host is, or resolves to, an address that is not public (FLEET_ALLOW_PRIVATE=0)."""


def non_public(address: str) -> bool:
    """True unless ``address`` (an IP literal) is globally routable unicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is link-local
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _literal(host: str) -> str | None:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return host.strip("[]")


class PrivateAddressMiddleware:
    def __init__(self) -> None:
        self._verdicts: dict[str, tuple[float, str]] = {}  # host -> (expiry, offending address or "")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PrivateAddressMiddleware:
        if FleetConfig.from_env().allow_private:
            raise NotConfigured("FLEET_ALLOW_PRIVATE is on (the default)")
        return cls()

    async def process_request(self, request: Request) -> None:
        parsed = urlparse_cached(request)
        scheme = parsed.scheme.lower()
        if scheme not in _SCHEMES:
            # file://, s3://, ftp://… read local files or reach services with the worker's own
            # credentials: with the guard on, only the web is crawled
            raise PrivateAddressRefused(
                f"{scheme or 'scheme-less'} URLs are not fetched with FLEET_ALLOW_PRIVATE=0 (http and https only)"
            )
        host = (parsed.hostname or "").lower()
        if not host:
            raise PrivateAddressRefused("a URL without a host is not fetched with FLEET_ALLOW_PRIVATE=0")
        bad = await self.offending(host, parsed.port)
        if bad:
            raise PrivateAddressRefused(
                f"{host} is or resolves to the non-public address {bad}; FLEET_ALLOW_PRIVATE=0 refuses "
                f"to fetch it (set FLEET_ALLOW_PRIVATE=1 to crawl private or loopback addresses)"
            )

    async def offending(self, host: str, port: int | None = None) -> str:
        """The first non-public address ``host`` is or resolves to, or ``""``. A name that does not
        resolve raises DNSLookupError (class A, retried later): the check never lets through what it
        could not check, and a resolver hiccup does not discard the request."""
        literal = _literal(host)
        if literal is not None:
            return literal if non_public(literal) else ""
        now = time.monotonic()
        cached = self._verdicts.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise DNSLookupError(f"{host}: {exc}") from None
        bad = next((str(info[4][0]) for info in infos if non_public(str(info[4][0]))), "")
        if len(self._verdicts) >= CACHE_HOSTS:
            for key in list(self._verdicts)[: CACHE_HOSTS // 2]:
                del self._verdicts[key]
        self._verdicts[host] = (now + CACHE_SECONDS, bad)
        return bad

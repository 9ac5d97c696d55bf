"""FLEET_ALLOW_PRIVATE=0's address check (middlewares/private.py); names resolve through /etc/hosts only."""

from __future__ import annotations

import asyncio
import socket

import pytest
from scrapy import Request
from scrapy.exceptions import NotConfigured
from scrapy.utils.test import get_crawler
from twisted.internet.error import DNSLookupError

from middlewares.private import PrivateAddressMiddleware, PrivateAddressRefused, non_public
from scraper.policy.taxonomy import A, D, classify_exception


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "ff02::1",
])
def test_non_public_addresses(address: str) -> None:
    assert non_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert not non_public(address)


def test_switched_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_ALLOW_PRIVATE", raising=False)
    with pytest.raises(NotConfigured):
        PrivateAddressMiddleware.from_crawler(get_crawler())


def test_refuses_literals_and_names_that_resolve_to_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ALLOW_PRIVATE", "0")
    mw = PrivateAddressMiddleware.from_crawler(get_crawler())

    async def main() -> None:
        for url in ("http://127.0.0.1:8000/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data/",
                    "http://localhost:8000/x", "http://LOCALHOST/x"):
            with pytest.raises(PrivateAddressRefused, match="FLEET_ALLOW_PRIVATE"):
                await mw.process_request(Request(url))
        assert await mw.process_request(Request("http://8.8.8.8/")) is None
        assert "localhost" in mw._verdicts  # resolved once, then cached

        # a name that does not resolve is left to the download (a DNS error, class A); no DNS query
        # leaves the machine in this test: the resolver is replaced
        async def no_such_host(*_: object, **__: object) -> list[object]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_host)
        with pytest.raises(DNSLookupError):  # never let through unchecked; class A, retried later
            await mw.process_request(Request("http://no-such-host.invalid/"))
        # only the web: file:// would read the worker's own files, s3:// use its credentials
        for url in ("file:///proc/self/environ", "s3://bucket/key", "ftp://127.0.0.1/x"):
            with pytest.raises(PrivateAddressRefused, match="http and https only"):
                await mw.process_request(Request(url))

    asyncio.run(main())


def test_refusal_is_class_d_and_an_unresolvable_name_class_a() -> None:
    verdict = classify_exception(PrivateAddressRefused("x"))
    assert verdict.cls == D and verdict.reason == "policy:private_address"
    assert classify_exception(DNSLookupError("no-such-host.invalid")).cls == A

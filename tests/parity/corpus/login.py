"""Sessions: a login-then-crawl spider (FormRequest.from_response, a session cookie, pages behind it) and a
spider with two ``meta["cookiejar"]`` sessions, each given its own cookie by the site."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import scrapy
from scrapy import Request
from scrapy.http import FormRequest, Response

from tests.parity.corpus import BASE

__all__ = ["CookieJars", "Login"]


class Login(scrapy.Spider):
    name = "parity_login"
    start_urls = [f"{BASE}/login"]

    def parse(self, response: Response) -> Iterable[Any]:
        yield FormRequest.from_response(response, formdata={"user": "alice", "password": "wonderland"},
                                        callback=self.after_login)

    def after_login(self, response: Response) -> Iterable[Any]:
        yield {"page": response.url, "who": response.css(".who::text").get()}
        yield from response.follow_all(css="a", callback=self.parse_member)

    def parse_member(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"page": response.url, "who": response.css(".who::text").get()}


class CookieJars(scrapy.Spider):
    """Scrapy's documented multi-session pattern: each start request opens a jar, and its follow-ups
    pass the jar on in ``meta``; /jar/check shows which session cookie(s) came with the request."""

    name = "parity_cookiejar"

    async def start(self) -> AsyncIterator[Request]:
        for jar in (1, 2):
            yield Request(f"{BASE}/jar/start?name=j{jar}", meta={"cookiejar": jar}, callback=self.parse)

    def parse(self, response: Response) -> Iterable[Request]:
        yield response.follow("/jar/check", meta={"cookiejar": response.meta["cookiejar"]},
                              callback=self.parse_check, dont_filter=True)

    def parse_check(self, response: Response) -> Iterable[dict[str, Any]]:
        yield {"jar": response.meta["cookiejar"], "session": response.css(".session::text").get()}

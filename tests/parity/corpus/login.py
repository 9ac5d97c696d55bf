"""A login-then-crawl spider: FormRequest.from_response, a session cookie, pages behind it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import scrapy
from scrapy.http import FormRequest, Response

from tests.parity.corpus import BASE

__all__ = ["Login"]


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

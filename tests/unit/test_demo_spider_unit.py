"""The demo spider's callbacks on static HTML: no servers, so drift handling is pinned fast."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import scrapy
from scrapy.http import HtmlResponse

from scraper.devtools.demo_site import DemoSite, product_fields
from scraper.spiders.demo_shop import DEFAULT_START_URL, DemoShopSpider, parse_price

BASE = "http://shop.test"

LIST_HTML = """<html><body><ol class="products">
<li><article class="product"><a href="/product/1.html">One</a></article></li>
<li><article class="product"><a href="/product/2.html">Two</a></article></li>
</ol><ul class="pager"><li class="next"><a href="page-2.html">next</a></li></ul></body></html>"""

LAST_LIST_HTML = """<html><body><ol class="products">
<li><article class="product"><a href="/product/3.html">Three</a></article></li>
</ol><ul class="pager"><li class="previous"><a href="page-1.html">prev</a></li></ul>
</body></html>"""

PRODUCT_HTML = """<html><body><div class="product-page">
<h1 class="name">  Sturdy   Teapot #7 </h1>
<p class="price">£1,234.50</p>
<span class="sku">SKU-00007</span>
<div class="description">A <b>very</b> sturdy teapot.</div>
</div></body></html>"""

DRIFTED_HTML = """<html><body><div class="product-page">
<h2 class="title-x">Sturdy Teapot #7</h2><div class="cost-box"><b>£12.00</b></div>
<span class="sku">SKU-00007</span></div></body></html>"""


def _response(url: str, body: str) -> HtmlResponse:
    return HtmlResponse(url=url, body=body.encode("utf-8"), encoding="utf-8")


def test_class_contract() -> None:
    assert DemoShopSpider.name == "demo_shop"
    assert DemoShopSpider.version == "1"
    assert DemoShopSpider.required_fields == ("name", "price", "sku")
    assert DemoShopSpider.item_callbacks == ("parse_product",)
    assert "start_requests" not in DemoShopSpider.__dict__


def test_parse_list_follows_products_and_next_page() -> None:
    spider = DemoShopSpider()
    out = list(spider.parse(_response(f"{BASE}/catalogue/page-1.html", LIST_HTML)))
    assert all(isinstance(r, scrapy.Request) for r in out)
    assert [r.url for r in out] == [
        f"{BASE}/product/1.html",
        f"{BASE}/product/2.html",
        f"{BASE}/catalogue/page-2.html",
    ]
    assert [r.callback for r in out] == [
        spider.parse_product,
        spider.parse_product,
        spider.parse,
    ]


def test_parse_last_list_page_has_no_next() -> None:
    spider = DemoShopSpider()
    out = list(spider.parse(_response(f"{BASE}/catalogue/page-2.html", LAST_LIST_HTML)))
    assert [r.url for r in out] == [f"{BASE}/product/3.html"]


def test_parse_product_extracts_clean_fields() -> None:
    spider = DemoShopSpider()
    url = f"{BASE}/product/7.html"
    (item,) = list(spider.parse_product(_response(url, PRODUCT_HTML)))
    assert item == {
        "name": "Sturdy Teapot #7",
        "price": 1234.5,
        "sku": "SKU-00007",
        "url": url,
        "description": "A very sturdy teapot.",
    }


def test_parse_product_on_drifted_layout_yields_none_fields() -> None:
    spider = DemoShopSpider()
    (item,) = list(spider.parse_product(_response(f"{BASE}/product/7.html", DRIFTED_HTML)))
    assert item["name"] is None
    assert item["price"] is None
    assert item["sku"] == "SKU-00007"
    assert item["description"] is None


def test_parse_product_on_empty_page_does_not_raise() -> None:
    spider = DemoShopSpider()
    (item,) = list(spider.parse_product(_response(f"{BASE}/x", "<html></html>")))
    assert {k for k, v in item.items() if v is None} == {"name", "price", "sku", "description"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("£12.34", 12.34),
        ("  £1,234.56 ", 1234.56),
        ("$7", 7.0),
        ("free", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_price(text: str | None, expected: float | None) -> None:
    assert parse_price(text) == expected


def _collect_start(spider: DemoShopSpider) -> list[Any]:
    async def run() -> list[Any]:
        return [r async for r in spider.start()]

    return asyncio.run(run())


def test_start_reads_env_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    spider = DemoShopSpider()
    monkeypatch.delenv("FLEET_DEMO_URL", raising=False)
    (default,) = _collect_start(spider)
    assert default.url == DEFAULT_START_URL
    monkeypatch.setenv("FLEET_DEMO_URL", "http://127.0.0.1:9/catalogue/page-1.html")
    (req,) = _collect_start(spider)
    assert req.url == "http://127.0.0.1:9/catalogue/page-1.html"
    assert req.callback == spider.parse


def test_spider_matches_rendered_demo_pages_without_a_server() -> None:
    """The site's renderer and the spider agree on every field (v1) and disagree on v2."""
    site = DemoSite(n_products=5, per_page=2)
    spider = DemoShopSpider()
    url = f"{site.base_url}/product/3.html"
    status, _, body = site.render("/product/3.html")
    assert status == 200
    (item,) = list(spider.parse_product(_response(url, body)))
    assert item == site.expected_item(3)
    assert item["price"] == product_fields(3)["price"]
    site.template = "v2"
    _, _, body = site.render("/product/3.html")
    (drifted,) = list(spider.parse_product(_response(url, body)))
    assert drifted["name"] is None and drifted["price"] is None
    # last list page: 5 products / 2 per page -> 3 pages, page 3 has 1 product and no next
    assert site.n_pages == 3
    _, _, body = site.render("/catalogue/page-3.html")
    out = list(spider.parse(_response(f"{site.base_url}/catalogue/page-3.html", body)))
    assert [r.url for r in out] == [f"{site.base_url}/product/5.html"]
    assert site.render("/product/6.html")[0] == 404
    assert site.render("/catalogue/page-4.html")[0] == 404

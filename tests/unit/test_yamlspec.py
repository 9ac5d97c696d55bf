"""YAML spider specs: parsing, the errors users see, and extraction on real HTML (no servers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scrapy.http import HtmlResponse, Request

from scraper.policy import drift
from scraper.worker.catalog import FleetSpiderLoader
from scraper.worker.yamlspec import SpecError, compile_spec, load_dir, parse_spec

SHOP = """
name: yshop
version: "7"
start_urls: [http://127.0.0.1:8000/catalogue/page-1.html]
pages:
  list:
    follow:
      - {css: "article.product a::attr(href)", page: product}
      - {css: "li.next a::attr(href)"}
  product:
    fields:
      name: {css: "h1.name::text", required: true}
      price: {css: "p.price::text", required: true, type: float}
      sku: {css: "span.sku::text", re: "SKU-(\\\\d+)", type: int}
      description: "div.description ::text"
      words: {xpath: "//div[@class='description']//text()", all: true}
"""

LIST_HTML = b"""<html><body><ol>
<li><article class="product"><a href="/product/1.html">One</a></article></li>
<li><article class="product"><a href="/product/2.html">Two</a></article></li>
</ol><ul class="pager"><li class="next"><a href="page-2.html">next</a></li></ul></body></html>"""

PRODUCT_HTML = """<html><body><div class="product-page"><h1 class="name">  Blue   Widget </h1>
<p class="price">\u00a31,234.50</p><span class="sku">SKU-00042</span>
<div class="description">Very <b>blue</b> widget.</div></div></body></html>""".encode()


def _spider(text: str = SHOP) -> type:
    return compile_spec(parse_spec(Path("shop.yaml"), text))


def _resp(url: str, body: bytes) -> HtmlResponse:
    return HtmlResponse(url=url, body=body, encoding="utf-8", request=Request(url))


def test_spec_compiles_to_a_spider_with_drift_declarations() -> None:
    cls = _spider()
    assert cls.name == "yshop" and cls.version == "7"
    assert cls.start_urls == ["http://127.0.0.1:8000/catalogue/page-1.html"]
    assert cls.item_callbacks == ("parse_product",)
    assert cls.required_fields == ("name", "price")
    assert callable(cls.parse) and callable(cls.parse_list) and callable(cls.parse_product)


def test_list_page_follows_links_with_named_callbacks() -> None:
    spider = _spider()()
    out = list(spider.parse(_resp("http://127.0.0.1:8000/catalogue/page-1.html", LIST_HTML)))
    assert [r.url for r in out] == ["http://127.0.0.1:8000/product/1.html", "http://127.0.0.1:8000/product/2.html",
                                    "http://127.0.0.1:8000/catalogue/page-2.html"]
    assert [r.callback.__name__ for r in out] == ["parse_product", "parse_product", "parse_list"]


def test_product_page_fields_types_and_regex() -> None:
    spider = _spider()()
    (item,) = list(spider.parse_product(_resp("http://127.0.0.1:8000/product/42.html", PRODUCT_HTML)))
    assert item == {"name": "Blue Widget", "price": 1234.5, "sku": 42, "description": "Very",
                    "words": ["Very", "blue", "widget."]}
    assert drift.check(spider, "parse_product", [item]) is None


def test_missing_required_field_is_drift_not_a_crash() -> None:
    spider = _spider()()
    body = PRODUCT_HTML.replace(b'class="name"', b'class="title-x"')
    (item,) = list(spider.parse_product(_resp("http://127.0.0.1:8000/product/42.html", body)))
    assert item["name"] is None
    verdict = drift.check(spider, "parse_product", [item])
    assert verdict is not None and verdict.missing == ("name",)
    assert drift.check(spider, "parse_list", []) is None  # navigation pages are never drift


def test_items_per_node_and_per_rule_required_fields() -> None:
    cls = _spider("""
name: rows
pages:
  table:
    items: "tr.row"
    fields:
      id: {css: "td.id::text", required: true, type: int}
      label: "td.label::text"
  detail:
    fields:
      title: {css: "h1::text", required: true}
""")
    body = b"<table><tr class='row'><td class='id'>1</td><td class='label'>a</td></tr>" \
           b"<tr class='row'><td class='id'>2</td></tr></table>"
    items = list(cls().parse(_resp("http://x.test/t", body)))
    assert items == [{"id": 1, "label": "a"}, {"id": 2, "label": None}]
    assert cls.item_callbacks == ("parse_table", "parse_detail", "parse")
    assert drift.required_for(cls, "parse_table") == ("id",)
    assert drift.required_for(cls, "parse_detail") == ("title",)
    assert drift.check(cls(), "parse", items) is None  # label is not required


@pytest.mark.parametrize(("text", "message"), [
    ("name: [", "not valid YAML"),
    ("- a\n- b", "top level: expected a mapping"),
    ("pages: {p: {follow: [{css: a}]}}", "name: required"),
    ("name: x", "pages: required"),
    ("name: x\nbogus: 1\npages: {p: {follow: [{css: a}]}}", "unknown key(s) bogus"),
    ("name: x\npages: {p: {}}", "a page needs fields"),
    ("name: x\npages: {p: {follow: [{css: a, page: nowhere}]}}", "page 'nowhere' is not one of the pages"),
    ("name: x\npages: {p: {fields: {a: {css: 'h1::text', xpath: '//h1'}}}}", "exactly one of css: or xpath:"),
    ("name: x\npages: {p: {fields: {a: {xpath: '//h1[', required: true}}}}", "invalid selector"),
    ("name: x\npages: {p: {fields: {a: {css: 'h1', type: date}}}}", "type must be one of"),
    ("name: x\npages: {p: {fields: {a: {css: 'h1', re: '('}}}}", "invalid re"),
    ("name: x\nstart_urls: [not-a-url]\npages: {p: {fields: {a: h1}}}", "not an absolute http(s) URL"),
    ("name: x\nstart_page: q\npages: {p: {fields: {a: h1}}}", "start_page: 'q' is not one of the pages"),
    ("name: 'bad name'\npages: {p: {fields: {a: h1}}}", "name: required"),
    ("name: x\npages: {p: {fields: {_meta: h1}}}", "invalid field name"),
    ("name: x\nkey: [sku]\npages: {p: {fields: {a: h1}}}", "key: 'sku' is not a field of any page"),
    ("name: x\nkey: [a, a]\npages: {p: {fields: {a: h1}}}", "a field is named twice"),
    ("name: x\nkey: {a: 1}\npages: {p: {fields: {a: h1}}}", "key: expected a list"),
])
def test_invalid_specs_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        parse_spec(Path("bad.yaml"), text)
    assert str(info.value).startswith("bad.yaml")


def test_loader_adds_specs_and_reports_bad_or_clashing_ones(tmp_path: Path) -> None:
    from scrapy.settings import Settings

    (tmp_path / "shop.yaml").write_text(SHOP)
    (tmp_path / "broken.yml").write_text("name: broken\npages: {}\n")
    (tmp_path / "clash.yaml").write_text("name: demo_shop\npages: {p: {fields: {a: h1}}}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    specs, errors = load_dir(tmp_path)
    assert set(specs) == {"yshop", "demo_shop"} and len(errors) == 1 and "broken.yml" in errors[0]
    settings = Settings()
    settings.setmodule("settings", priority="project")
    settings.set("FLEET_SPIDERS_DIR", str(tmp_path))
    sl = FleetSpiderLoader.from_settings(settings)
    assert "yshop" in sl.list() and sl.load("yshop").spec_path.endswith("shop.yaml")
    assert sl.load("demo_shop").__module__ == "scraper.spiders.demo_shop"  # Python wins, the clash is reported
    assert any("taken by the Python spider" in e for e in sl.spec_errors)
    assert any("broken.yml" in e for e in sl.spec_errors)

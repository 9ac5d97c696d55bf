"""YAML spider specs (``FLEET_SPIDERS_DIR``): a spider written as data — start URLs, page rules, fields.

Why: most catalogue-style targets need no code, and an engineer answering a drift alert should be able
to fix a selector in one reviewed line. A spec compiles to an ordinary ``scrapy.Spider`` subclass, so the
queue, the worker, drift detection (``required: true`` fields, pages that carry fields), ``fleet
replay`` and ``fleet export`` treat it exactly like a Python spider. The format, with every key::

    name: shop                        # required; letters, digits, _ . -
    version: "3"                      # stamped into every item's _meta.spider_version (default "0")
    key: [sku]                        # optional: the fields that identify an item across pages and runs
    start_urls:                       # what `fleet seed shop` enqueues without --url/--urls
      - https://shop.example/catalogue/page-1.html
    allowed_domains: [shop.example]   # requests to other hosts are dropped (Scrapy's offsite rule)
    start_page: list                  # the page rule of start URLs and of `seed --url` (default: the first)
    settings: {DOWNLOAD_DELAY: 0.5}   # Scrapy custom_settings (politeness ones hold fleet-wide: README)
    domain_settings:                  # per-domain politeness overrides (README, Crawling politely)
      shop.example: {CONCURRENT_REQUESTS_PER_DOMAIN: 2}
    render: true                      # pages are rendered in headless Chromium first (scraper.worker.render)
    pages:                            # page rules, by name; each becomes the callback parse_<name>
      list:                           # a navigation page: follows links, carries no fields
        follow:
          - {css: "article.product a::attr(href)", page: product}
          - {css: "li.next a::attr(href)"}            # page: defaults to this same rule
      product:                        # a page that carries fields: one item per page...
        items: {css: "div.row"}       # ...or one item per matching node (fields relative to it)
        fields:
          name:  {css: "h1::text", required: true}
          price: {css: "p.price::text", required: true, type: float}
          sku:   {xpath: "//span[@class='sku']/text()", re: "SKU-(\\d+)"}
          tags:  {css: "ul.tags li::text", all: true}  # every match, as a list

A field takes the first match (``all: true``: every match, as a list), whitespace collapsed; ``re``
keeps the first group (or the whole match) of the first value that matches; ``type`` is ``str``
(default), ``int`` or ``float`` (the first number in the text, thousands separators dropped). Nothing
found gives null, which a ``required`` field reports as drift (class C), never a crash. ``key`` becomes
the spider's ``item_key`` (scraper.worker.identity): each name must be a field of some page; an item whose
key field is empty keeps the per-request key and is counted as ``fleet/items/key_missing``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scrapy
import yaml
from parsel import Selector, SelectorList
from scrapy.http import Response

from scraper.queue.names import is_name

__all__ = [
    "SUFFIXES",
    "FieldRule",
    "FollowRule",
    "PageRule",
    "Query",
    "Spec",
    "SpecError",
    "YamlSpider",
    "compile_spec",
    "load_dir",
    "parse_spec",
]

SUFFIXES = (".yaml", ".yml")
_RULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,60}$")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_TYPES = ("str", "int", "float")


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file and what to fix."""


@dataclass(frozen=True)
class Query:
    css: str | None = None
    xpath: str | None = None

    def run(self, node: Selector | Response) -> SelectorList[Selector]:
        return node.css(self.css) if self.css is not None else node.xpath(self.xpath or "")


@dataclass(frozen=True)
class FieldRule:
    name: str
    query: Query
    required: bool = False
    all: bool = False
    regex: re.Pattern[str] | None = None
    type: str = "str"

    def extract(self, node: Selector | Response) -> Any:
        values = [" ".join(v.split()) for v in self.query.run(node).getall()]
        if self.regex is not None:
            found = (self.regex.search(v) for v in values)
            values = [m.group(1) if m.re.groups else m.group(0) for m in found if m is not None]
        converted = [c for c in (_convert(v, self.type) for v in values if v) if c is not None]
        if self.all:
            return converted
        return converted[0] if converted else None


@dataclass(frozen=True)
class FollowRule:
    query: Query
    page: str


@dataclass(frozen=True)
class PageRule:
    name: str
    fields: tuple[FieldRule, ...] = ()
    follow: tuple[FollowRule, ...] = ()
    items: Query | None = None

    @property
    def callback(self) -> str:
        return f"parse_{self.name}"


@dataclass
class Spec:
    name: str
    path: Path
    pages: dict[str, PageRule]
    start_page: str
    start_urls: list[str] = field(default_factory=list)
    allowed_domains: list[str] = field(default_factory=list)
    version: str = "0"
    settings: dict[str, Any] = field(default_factory=dict)
    domain_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-domain politeness
    render: bool = False
    item_key: tuple[str, ...] = ()


def _convert(text: str, kind: str) -> Any:
    if kind == "str":
        return text
    m = _NUMBER_RE.search(text)
    if m is None:
        return None
    number = m.group(0).replace(",", "")
    try:
        return int(float(number)) if kind == "int" else float(number)
    except ValueError:
        return None


class _Reader:
    """Validation with messages that say where (file, key) and what is expected."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, what: str) -> SpecError:
        return SpecError(f"{self.path}: {where}: {what}")

    def mapping(self, value: Any, where: str, keys: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in keys)
        if unknown:
            raise self.fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(keys))}")
        return value

    def string_list(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise self.fail(where, "expected a list of non-empty strings")
        return list(value)

    def query(self, value: dict[str, Any], where: str) -> Query:
        css, xpath = value.get("css"), value.get("xpath")
        if (css is None) == (xpath is None):
            raise self.fail(where, "give exactly one of css: or xpath:")
        q = Query(css=css, xpath=xpath)
        text = css if css is not None else xpath
        if not isinstance(text, str) or not text.strip():
            raise self.fail(where, "the selector must be a non-empty string")
        try:
            q.run(Selector(text="<html></html>"))
        except Exception as exc:  # parsel raises several types for a bad expression
            raise self.fail(where, f"invalid selector {text!r}: {exc}") from None
        return q

    def field(self, name: Any, value: Any, where: str) -> FieldRule:
        if not isinstance(name, str) or not name or name == "_meta":
            raise self.fail(where, f"invalid field name {name!r}")
        if isinstance(value, str):  # shorthand: `name: "h1::text"` is a CSS selector
            value = {"css": value}
        v = self.mapping(value, where, {"css", "xpath", "required", "all", "re", "type"})
        regex = None
        if v.get("re") is not None:
            try:
                regex = re.compile(str(v["re"]))
            except re.error as exc:
                raise self.fail(where, f"invalid re {v['re']!r}: {exc}") from None
        kind = v.get("type", "str")
        if kind not in _TYPES:
            raise self.fail(where, f"type must be one of {', '.join(_TYPES)}, got {kind!r}")
        for flag in ("required", "all"):
            if not isinstance(v.get(flag, False), bool):
                raise self.fail(where, f"{flag}: must be true or false")
        return FieldRule(
            name=name,
            query=self.query(v, where),
            required=bool(v.get("required", False)),
            all=bool(v.get("all", False)),
            regex=regex,
            type=kind,
        )

    def page(self, name: Any, value: Any, page_names: set[str]) -> PageRule:
        where = f"pages.{name}"
        if not isinstance(name, str) or not _RULE_RE.match(name):
            raise self.fail(where, "a page name is a Python identifier (letters, digits, _)")
        v = self.mapping(value if value is not None else {}, where, {"fields", "follow", "items"})
        fields_raw = v.get("fields") or {}
        if not isinstance(fields_raw, dict):
            raise self.fail(f"{where}.fields", "expected a mapping of field name to selector")
        fields = tuple(self.field(k, x, f"{where}.fields.{k}") for k, x in fields_raw.items())
        follow_raw = v.get("follow") or []
        if not isinstance(follow_raw, list):
            raise self.fail(f"{where}.follow", "expected a list of {css|xpath, page}")
        follow = []
        for i, f in enumerate(follow_raw):
            fw = f"{where}.follow[{i}]"
            fv = self.mapping(f, fw, {"css", "xpath", "page"})
            target = fv.get("page", name)
            if target not in page_names:
                raise self.fail(fw, f"page {target!r} is not one of the pages: {', '.join(sorted(page_names))}")
            follow.append(FollowRule(query=self.query(fv, fw), page=target))
        items = None
        if v.get("items") is not None:
            if not fields:
                raise self.fail(f"{where}.items", "items: needs fields: to extract from each node")
            iv = v["items"] if isinstance(v["items"], dict) else {"css": v["items"]}
            items = self.query(self.mapping(iv, f"{where}.items", {"css", "xpath"}), f"{where}.items")
        if not fields and not follow:
            raise self.fail(where, "a page needs fields: (it carries items) or follow: (it links on), or both")
        return PageRule(name=name, fields=fields, follow=tuple(follow), items=items)


def parse_spec(path: Path, text: str) -> Spec:
    r = _Reader(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    top = r.mapping(
        doc,
        "top level",
        {"name", "version", "key", "start_urls", "allowed_domains", "start_page", "settings", "domain_settings",
         "pages", "render"},
    )
    name = top.get("name")
    if not isinstance(name, str) or not is_name(name):  # the rule of every spider name (scraper.queue.names)
        raise r.fail("name", "required: 1-100 letters, digits, _ . -")
    pages_raw = top.get("pages")
    if not isinstance(pages_raw, dict) or not pages_raw:
        raise r.fail("pages", "required: a mapping of page rules (see `fleet spiders --help`)")
    names = {str(k) for k in pages_raw}
    pages = {str(k): r.page(k, v, names) for k, v in pages_raw.items()}
    start_page = top.get("start_page", next(iter(pages)))
    if start_page not in pages:
        raise r.fail("start_page", f"{start_page!r} is not one of the pages: {', '.join(sorted(pages))}")
    settings = top.get("settings") or {}
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise r.fail("settings", "expected a mapping of Scrapy setting names to values")
    domain_settings = top.get("domain_settings") or {}
    if not isinstance(domain_settings, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in domain_settings.items()):
        raise r.fail("domain_settings", "expected a mapping of domain -> {setting: value} (README: Crawling politely)")
    render = top.get("render", False)
    if not isinstance(render, bool):
        raise r.fail("render", "must be true or false")
    item_key = r.string_list(top.get("key"), "key")
    field_names = {f.name for p in pages.values() for f in p.fields}
    for k in item_key:
        if k not in field_names:
            raise r.fail("key", f"{k!r} is not a field of any page: {', '.join(sorted(field_names)) or 'none'}")
    if len(set(item_key)) != len(item_key):
        raise r.fail("key", "a field is named twice")
    start_urls = r.string_list(top.get("start_urls"), "start_urls")
    for u in start_urls:
        if not re.match(r"^https?://", u):
            raise r.fail("start_urls", f"{u!r} is not an absolute http(s) URL")
    return Spec(
        name=name,
        path=path,
        pages=pages,
        start_page=start_page,
        start_urls=start_urls,
        allowed_domains=r.string_list(top.get("allowed_domains"), "allowed_domains"),
        version=str(top.get("version", "0")),
        settings=dict(settings),
        domain_settings={k: dict(v) for k, v in domain_settings.items()},
        render=render,
        item_key=tuple(item_key),
    )


class YamlSpider(scrapy.Spider):
    """Base of compiled specs; never registered itself (no name)."""

    spec: Spec
    spec_path: str = ""

    def _handle(self, rule: PageRule, response: Response) -> Iterator[Any]:
        if rule.fields:
            nodes: list[Any] = list(rule.items.run(response)) if rule.items is not None else [response]
            for node in nodes:
                yield {f.name: f.extract(node) for f in rule.fields}
        for link in rule.follow:
            callback = getattr(self, self.spec.pages[link.page].callback)
            for href in link.query.run(response).getall():
                href = href.strip()
                if href and not href.startswith(("javascript:", "mailto:", "tel:", "#")):
                    try:
                        yield response.follow(href, callback=callback)
                    except ValueError:  # no URL ('http://[::1/', a port out of range): skipped where found,
                        # as any link Fleet would not fetch; it raised out of the callback (class C, page lost)
                        if getattr(self, "crawler", None) is not None and self.crawler.stats is not None:
                            self.crawler.stats.inc_value("fleet/links_malformed")


def _callback(rule: PageRule) -> Callable[..., Iterator[Any]]:
    def parse_page(self: YamlSpider, response: Response, **kwargs: Any) -> Iterator[Any]:
        return self._handle(rule, response)

    parse_page.__name__ = parse_page.__qualname__ = rule.callback
    parse_page.__doc__ = f"Page rule {rule.name!r} of the YAML spec."
    return parse_page


def compile_spec(spec: Spec) -> type[YamlSpider]:
    """A Spider subclass for ``spec``: ``parse`` (start page) and ``parse_<page>`` per page rule."""
    attrs: dict[str, Any] = {
        "name": spec.name,
        "spec": spec,
        "spec_path": str(spec.path),
        "version": spec.version,
        "start_urls": list(spec.start_urls),
        "custom_settings": dict(spec.settings),
        "domain_settings": {k: dict(v) for k, v in spec.domain_settings.items()},
        "render_js": spec.render,
        "item_key": spec.item_key,
        "__module__": __name__,
        "__doc__": f"YAML spider spec {spec.path}",
    }
    if spec.allowed_domains:
        attrs["allowed_domains"] = list(spec.allowed_domains)
    item_pages = [p for p in spec.pages.values() if p.fields]
    callbacks = [p.callback for p in item_pages]
    by_callback = {p.callback: tuple(f.name for f in p.fields if f.required) for p in item_pages}
    for p in spec.pages.values():
        attrs[p.callback] = _callback(p)
    start = spec.pages[spec.start_page]
    attrs["parse"] = _callback(start)
    if start.fields:
        callbacks.append("parse")
        by_callback["parse"] = by_callback[start.callback]
    required: list[str] = []
    for names in by_callback.values():
        required += [n for n in names if n not in required]
    attrs["item_callbacks"] = tuple(callbacks)
    attrs["required_fields"] = tuple(required)
    attrs["required_fields_by_callback"] = by_callback
    cls_name = "Yaml_" + re.sub(r"\W", "_", spec.name)
    return type(cls_name, (YamlSpider,), attrs)


def load_dir(directory: str | Path) -> tuple[dict[str, type[YamlSpider]], list[str]]:
    """Every spec in ``directory`` (``*.yaml``/``*.yml``, not recursive): (spiders by name, errors)."""
    d = Path(directory)
    if not d.is_dir():
        return {}, [f"FLEET_SPIDERS_DIR={directory}: not a directory"]
    found: dict[str, type[YamlSpider]] = {}
    errors: list[str] = []
    for path in sorted(p for p in d.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        try:
            if path.stat().st_size > 4 << 20:  # ~60k start URLs; parsing 9 MB took a minute and 1.4 GB
                raise SpecError(f"{path}: larger than 4 MiB (seed URLs go in a file: fleet seed --urls)")
            spec = parse_spec(path, path.read_text(encoding="utf-8"))
        except (SpecError, OSError, UnicodeDecodeError) as exc:  # each named by its file
            errors.append(str(exc) if isinstance(exc, SpecError) else f"{path}: {getattr(exc, 'strerror', 0) or exc}")
            continue
        if spec.name in found:
            errors.append(f"{path}: spider name {spec.name!r} is also used by {found[spec.name].spec_path}")
            continue
        found[spec.name] = compile_spec(spec)
    return found, errors

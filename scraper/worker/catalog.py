"""Finding spiders: Scrapy's SPIDER_MODULES plus FLEET_SPIDER_MODULES, unchanged user classes, and
the YAML specs in FLEET_SPIDERS_DIR (scraper.worker.yamlspec).

Why Scrapy's own SpiderLoader: a user's spider must work in Fleet exactly as in ``scrapy crawl``, so
discovery follows the same rules (any ``scrapy.Spider`` subclass with a ``name`` in those modules).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from scrapy import Spider
from scrapy.settings import Settings
from scrapy.spiderloader import SpiderLoader

from scraper.infra.config import FleetConfig
from scraper.worker import redisspider, yamlspec

__all__ = [
    "FleetSpiderLoader",
    "SpiderNotFound",
    "base_settings",
    "describe",
    "load_spider",
    "loader",
    "renders",
    "worker_settings",
]

# Components Fleet's guarantees depend on; a spider's custom_settings may add to these, never remove.
_MERGED_DICTS = ("SPIDER_MIDDLEWARES", "DOWNLOADER_MIDDLEWARES", "ITEM_PIPELINES", "EXTENSIONS", "DOWNLOAD_HANDLERS")
_FORCED = ("SCHEDULER", "DUPEFILTER_CLASS", "RETRY_ENABLED", "HTTPERROR_ALLOW_ALL", "TWISTED_REACTOR", "DOWNLOADER")


class SpiderNotFound(LookupError):
    pass


class FleetSpiderLoader(SpiderLoader):
    """Scrapy's loader plus the YAML specs of ``FLEET_SPIDERS_DIR``; a spec whose name a Python spider
    already has is refused (reported in ``spec_errors``), never silently shadowed."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.spec_errors: list[str] = []
        directory = settings.get("FLEET_SPIDERS_DIR")
        if not directory:
            return
        specs, self.spec_errors = yamlspec.load_dir(directory)
        for name, cls in specs.items():
            if name in self._spiders:
                self.spec_errors.append(f"{cls.spec_path}: spider name {name!r} is taken by the Python spider "
                                        f"{self._spiders[name].__module__}.{self._spiders[name].__qualname__}")
                continue
            self._spiders[name] = cls


def base_settings(config: FleetConfig | None = None) -> Settings:
    cfg = config or FleetConfig.from_env()
    settings = Settings()
    settings.setmodule("settings", priority="project")
    modules = list(settings.getlist("SPIDER_MODULES"))
    for m in cfg.spider_modules:
        if m not in modules:
            modules.append(m)
    settings.set("SPIDER_MODULES", modules, priority="project")
    settings.set("CONCURRENT_REQUESTS", cfg.concurrency, priority="project")
    settings.set("FLEET_SPIDERS_DIR", cfg.spiders_dir, priority="project")
    settings.set("FLEET_CHROMIUM", cfg.chromium, priority="project")
    handlers = dict(settings.getdict("DOWNLOAD_HANDLERS"))
    for scheme in cfg.schemes:
        if scheme in handlers and handlers[scheme] is None:
            del handlers[scheme]  # FLEET_SCHEMES names it: Scrapy's own handler (DOWNLOAD_HANDLERS_BASE)
    settings.set("DOWNLOAD_HANDLERS", handlers, priority="project")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules next to where `fleet` runs are importable
    return settings


def loader(settings: Settings) -> FleetSpiderLoader:
    try:
        return FleetSpiderLoader.from_settings(settings)
    except ImportError as exc:
        raise SpiderNotFound(
            f"could not import spider modules {settings.getlist('SPIDER_MODULES')}: {exc}. "
            "Check FLEET_SPIDER_MODULES and that the module is on PYTHONPATH."
        ) from exc


def load_spider(name: str, settings: Settings) -> type[Spider]:
    sl = loader(settings)
    try:
        return sl.load(name)
    except KeyError:
        known = ", ".join(sorted(sl.list())) or "(none)"
        broken = "".join(f"\n  skipped spec: {e}" for e in sl.spec_errors)
        raise SpiderNotFound(
            f"no spider named {name!r}; known spiders: {known}. "
            "Add your module to FLEET_SPIDER_MODULES (comma list of importable modules), "
            f"or a YAML spec to FLEET_SPIDERS_DIR.{broken}"
        ) from None


def worker_settings(spidercls: type[Spider], settings: Settings) -> Settings:
    """Apply the spider's custom_settings, then re-assert the components Fleet cannot work without."""
    s = settings.copy()
    custom: dict[str, Any] = dict(getattr(spidercls, "custom_settings", None) or {})
    for key in _MERGED_DICTS:
        merged = dict(settings.getdict(key))
        user = custom.get(key) or {}
        for comp, order in dict(user).items():
            if comp in merged and merged[comp] is not None and order is None:
                continue  # a spider may not switch off Fleet's own components
            merged.setdefault(comp, order)
        s.set(key, merged, priority="cmdline")
    for key in _FORCED:
        s.set(key, settings.get(key), priority="cmdline")
    if redisspider.is_redis_spider(spidercls):
        # scrapy-redis's own pull is replaced by Fleet's start-key feeder (scraper.worker.redisfeed)
        s.set("EXTENSIONS", {**s.getdict("EXTENSIONS"), "scraper.worker.redisfeed.StartFeeder": 500},
              priority="cmdline")
    if renders(spidercls, s):
        from scraper.worker import render  # imports Playwright: only for the spiders that need it
        render.apply(spidercls, s)
    return s


_PLAYWRIGHT_HANDLERS = ("scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler",
                        "scraper.worker.render.FleetPlaywrightDownloadHandler")


def renders(spidercls: type[Spider], settings: Settings) -> bool:
    """Whether the spider's pages are rendered in Chromium (scraper.worker.render): ``render_js = True``, or
    scrapy-playwright's download handler in its settings or its custom_settings."""
    if getattr(spidercls, "render_js", False):
        return True
    custom = (getattr(spidercls, "custom_settings", None) or {}).get("DOWNLOAD_HANDLERS") or {}
    handlers = [*settings.getdict("DOWNLOAD_HANDLERS").values(), *dict(custom).values()]
    return any(str(v) in _PLAYWRIGHT_HANDLERS for v in handlers if v)


def describe(spidercls: type[Spider]) -> dict[str, Any]:
    spec = getattr(spidercls, "spec_path", None)
    return {
        "name": spidercls.name,
        "kind": "yaml" if spec else "python",
        "module": spec or spidercls.__module__,
        "class": spidercls.__qualname__,
        "required_fields": list(getattr(spidercls, "required_fields", ()) or ()),
        "item_callbacks": list(getattr(spidercls, "item_callbacks", ()) or ()),
        "version": str(getattr(spidercls, "version", "0")),
        "render_js": bool(getattr(spidercls, "render_js", False)),
    }

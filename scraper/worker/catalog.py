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
from scraper.worker import project as projectmod
from scraper.worker import redisspider, yamlspec
from scraper.worker.hedge import hedge_settings

__all__ = [
    "ITEM_PROCESSOR",
    "OBJECT_PIPELINE",
    "OBJECT_PIPELINE_ORDER",
    "FleetSpiderLoader",
    "SettingsError",
    "SpiderNotFound",
    "base_settings",
    "check_setting_values",
    "describe",
    "item_pipelines",
    "load_spider",
    "loader",
    "renders",
    "worker_settings",
]

# Components Fleet's guarantees depend on; a spider's custom_settings may add to these, never remove.
_MERGED_DICTS = ("SPIDER_MIDDLEWARES", "DOWNLOADER_MIDDLEWARES", "EXTENSIONS", "DOWNLOAD_HANDLERS")
#: Set when a spider's custom_settings or its project's settings module say RETRY_ENABLED = False: Fleet keeps
#: Scrapy's RetryMiddleware off (its own budgets retry), so the spider's wish is read from here instead
#: (scraper.worker.failures.spider_retry_times: no retry at all)
RETRY_DISABLED = "FLEET_SPIDER_RETRY_DISABLED"


#: Set when a spider's custom_settings or its project's settings module name a DUPEFILTER_CLASS that never finds a
#: request seen (Scrapy's BaseDupeFilter: "no duplicate filtering"): Fleet's dupefilter setting stays its own, and
#: every request the spider yields is queued as ``dont_filter`` instead (scraper.worker.discovery)
NO_DEDUP = "FLEET_SPIDER_NO_DEDUP"


def _no_dedup(values: dict[str, Any]) -> bool:
    """Whether settings given as a dict name a DUPEFILTER_CLASS whose ``request_seen`` is BaseDupeFilter's (never
    seen). A class that does not import is left to Scrapy's own error (Fleet forces its own dupefilter anyway)."""
    name = values.get("DUPEFILTER_CLASS")
    if not name:
        return False
    from scrapy.dupefilters import BaseDupeFilter
    from scrapy.utils.misc import load_object

    try:
        cls = load_object(name) if isinstance(name, str) else name
    except Exception:  # any import error: Scrapy's to report, not a reason to filter nothing
        return False
    return getattr(cls, "request_seen", None) is BaseDupeFilter.request_seen


def _retry_disabled(values: dict[str, Any]) -> bool:
    """Whether settings given as a dict (a project's module, a spider's custom_settings) say RETRY_ENABLED =
    False, read as Scrapy reads a bool ("False", "0" and 0 too)."""
    return "RETRY_ENABLED" in values and not Settings({"RETRY_ENABLED": values["RETRY_ENABLED"]}).getbool(
        "RETRY_ENABLED")


_FORCED = ("SCHEDULER", "DUPEFILTER_CLASS", "RETRY_ENABLED", "HTTPERROR_ALLOW_ALL", "TWISTED_REACTOR", "DOWNLOADER",
           "ITEM_PROCESSOR")

# The item pipeline that hands each item to its request's object (pipelines.objects; settings module):
# last, so a spider's own pipelines run before it. Names, not imports: scraper never imports pipelines/.
OBJECT_PIPELINE = "pipelines.objects.ObjectPipeline"
OBJECT_PIPELINE_ORDER = 1000
ITEM_PROCESSOR = "pipelines.objects.FleetItemProcessor"


class SpiderNotFound(LookupError):
    pass


#: Scrapy settings read as numbers at a worker's start (Settings.getint / getfloat): a spider's value that is
#: none ("abc" in a YAML spec's settings:) crashed every worker after the run was seeded
_NUMERIC_SETTINGS: dict[str, type] = {
    "DOWNLOAD_TIMEOUT": float, "DOWNLOAD_DELAY": float, "RANDOMIZE_DOWNLOAD_DELAY": bool,
    "CONCURRENT_REQUESTS": int, "CONCURRENT_REQUESTS_PER_DOMAIN": int, "CONCURRENT_REQUESTS_PER_IP": int,
    "CONCURRENT_ITEMS": int, "DOWNLOAD_MAXSIZE": int, "DOWNLOAD_WARNSIZE": int, "RETRY_TIMES": int,
    "REDIRECT_MAX_TIMES": int, "DEPTH_LIMIT": int, "DEPTH_PRIORITY": int, "URLLENGTH_LIMIT": int,
    "AUTOTHROTTLE_START_DELAY": float, "AUTOTHROTTLE_MAX_DELAY": float, "AUTOTHROTTLE_TARGET_CONCURRENCY": float,
    "CLOSESPIDER_TIMEOUT": float, "CLOSESPIDER_ITEMCOUNT": int, "CLOSESPIDER_PAGECOUNT": int,
    "CLOSESPIDER_ERRORCOUNT": int, "FLEET_MAX_PAGE_TAGS": int,
}


def check_setting_values(spidercls: type[Spider]) -> None:
    """The spider's ``custom_settings`` (a YAML spec's ``settings:``) give a number where Scrapy reads one,
    or :class:`SettingsError` naming the setting: found before a run is seeded, not by each worker's crash."""
    values = getattr(spidercls, "custom_settings", None) or {}
    probe = Settings()
    for name, kind in _NUMERIC_SETTINGS.items():
        if name not in values or values[name] is None:
            continue
        probe.set(name, values[name])
        try:
            {int: probe.getint, float: probe.getfloat, bool: probe.getbool}[kind](name)
        except (TypeError, ValueError):
            raise SettingsError(
                f"spider {getattr(spidercls, 'name', '?')!r}: setting {name}={values[name]!r:.40} is not "
                f"{'an integer' if kind is int else 'a boolean' if kind is bool else 'a number'}"
            ) from None


class SettingsError(RuntimeError):
    """A spider's custom_settings (or its project's settings module) would lose its items (the message
    names the setting and the fix), or the project's settings module cannot be imported."""


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
    """Fleet's settings module, then the Scrapy project's own (scraper.worker.project), then FLEET_* config
    (a FLEET_* variable set in the environment beats the project's module; a spider's custom_settings beat both).

    Raises :class:`SettingsError` when the project's settings module cannot be imported or would lose items."""
    cfg = config or FleetConfig.from_env()
    settings = Settings()
    settings.setmodule("settings", priority="project")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules next to where `fleet` runs are importable
    try:
        project = projectmod.load()
    except projectmod.ProjectSettingsError as exc:
        raise SettingsError(str(exc)) from None
    modules = list(settings.getlist("SPIDER_MODULES"))
    if project is not None:
        apply_project(settings, project)
        modules += [m for m in _as_list(project.values.get("SPIDER_MODULES")) if m not in modules]
    for m in cfg.spider_modules:
        if m not in modules:
            modules.append(m)
    settings.set("SPIDER_MODULES", modules, priority="project")
    for key, var, value in (("CONCURRENT_REQUESTS", "FLEET_CONCURRENCY", cfg.concurrency),
                            ("FLEET_SPIDERS_DIR", "FLEET_SPIDERS_DIR", cfg.spiders_dir),
                            ("FLEET_CHROMIUM", "FLEET_CHROMIUM", cfg.chromium),
                            ("FLEET_METRICS_PORT", "FLEET_METRICS_PORT", cfg.metrics_port or 0)):  # worker.exporter
        # set in the environment: the operator's value beats the project's settings module (not custom_settings);
        # unset: Fleet's default, which the project's own value overrides
        settings.set(key, value, priority=projectmod.PRIORITY + 1 if os.environ.get(var, "").strip() else "project")
    handlers = dict(settings.getdict("DOWNLOAD_HANDLERS"))
    for scheme in cfg.schemes:
        if scheme in handlers and handlers[scheme] is None:
            del handlers[scheme]  # FLEET_SCHEMES names it: Scrapy's own handler (DOWNLOAD_HANDLERS_BASE)
    settings.set("DOWNLOAD_HANDLERS", handlers, priority=settings.getpriority("DOWNLOAD_HANDLERS") or "project")
    return settings


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else [str(x) for x in value]


def _merge_components(fleet: dict[Any, Any], user: dict[Any, Any]) -> dict[Any, Any]:
    """A user's component dict added to Fleet's: a user may add components, never switch Fleet's off."""
    merged = dict(fleet)
    for comp, order in dict(user).items():
        if comp in merged and merged[comp] is not None and order is None:
            continue  # a spider may not switch off Fleet's own components
        merged.setdefault(comp, order)
    return merged


def apply_project(settings: Settings, project: projectmod.Project) -> None:
    """The project's settings module as a layer (``projectmod.PRIORITY``) under the rules of custom_settings:
    component dicts merged into Fleet's, pipelines merged before ObjectPipeline (checked per spider by
    :func:`item_pipelines`), Fleet's mandatory components (``_FORCED``) kept, SPIDER_MODULES left to the caller."""
    values = project.values
    processor = values.get("ITEM_PROCESSOR")
    if processor is not None and _path(processor) != ITEM_PROCESSOR:
        raise SettingsError(f"project settings {project.module}: ITEM_PROCESSOR {_path(processor)} replaces Fleet's "
                            f"{ITEM_PROCESSOR}, which maps items to their requests; remove it")
    pipelines = dict(settings.getdict("ITEM_PIPELINES"))
    for comp, order in dict(values.get("ITEM_PIPELINES") or {}).items():
        if _path(comp) == OBJECT_PIPELINE:
            if order is None:
                raise SettingsError(f"project settings {project.module}: ITEM_PIPELINES sets {OBJECT_PIPELINE} to "
                                    "None, so no item would ever be stored; remove that entry")
            pipelines[OBJECT_PIPELINE] = order
            continue
        pipelines.setdefault(comp, order)
    settings.set("ITEM_PIPELINES", pipelines, priority=projectmod.PRIORITY)
    if _retry_disabled(values):
        settings.set(RETRY_DISABLED, True, priority=projectmod.PRIORITY)
    if _no_dedup(values):
        settings.set(NO_DEDUP, True, priority=projectmod.PRIORITY)
    for key, value in values.items():
        if key in _FORCED or key in ("ITEM_PIPELINES", "SPIDER_MODULES"):
            continue  # re-asserted by worker_settings / merged above / the caller's spider search
        if key in _MERGED_DICTS:
            value = _merge_components(settings.getdict(key), dict(value or {}))
        settings.set(key, value, priority=projectmod.PRIORITY)
    settings.set("FLEET_PROJECT_SETTINGS", project.module, priority=projectmod.PRIORITY)
    # its scrapy-redis SCHEDULER, DUPEFILTER_CLASS...: skipped above or harmless, named in the worker's notice
    settings.set("FLEET_PROJECT_REPLACED", redisspider.replaced_in(values), priority=projectmod.PRIORITY)


def loader(settings: Settings) -> FleetSpiderLoader:
    try:
        return FleetSpiderLoader.from_settings(settings)
    except ImportError as exc:
        raise SpiderNotFound(
            f"could not import spider modules {settings.getlist('SPIDER_MODULES')}: {exc}. "
            "Check FLEET_SPIDER_MODULES and that the module is on PYTHONPATH."
        ) from exc
    except Exception as exc:  # a module that raises while imported (SyntaxError, NameError...): its error, one line
        raise SpiderNotFound(
            f"a spider module of {settings.getlist('SPIDER_MODULES')} failed to import: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None


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


def worker_settings(spidercls: type[Spider], settings: Settings, *, rendered: bool = True) -> Settings:
    """Apply the spider's custom_settings over ``settings`` (base_settings: Fleet's and the project's), then
    re-assert the components Fleet cannot work without. ``rendered=False``: not the Chromium download handler
    of a rendering spider (``fleet seed``/``replay`` make the spider but fetch nothing: no Chromium needed)."""
    s = settings.copy()
    custom: dict[str, Any] = dict(getattr(spidercls, "custom_settings", None) or {})
    for key in _MERGED_DICTS:
        s.set(key, _merge_components(settings.getdict(key), dict(custom.get(key) or {})), priority="cmdline")
    s.set("ITEM_PIPELINES", item_pipelines(spidercls, settings.getdict("ITEM_PIPELINES")), priority="cmdline")
    if _retry_disabled(custom):
        s.set(RETRY_DISABLED, True, priority="spider")  # Fleet's retries stay on; this spider asked for none
    if "DUPEFILTER_CLASS" in custom:
        s.set(NO_DEDUP, _no_dedup(custom), priority="spider")  # the spider's word over its project's
    for key in _FORCED:
        s.set(key, settings.get(key), priority="cmdline")
    # scrapy-redis's RedisStatsCollector makes Redis calls per stat on the reactor, shared by every worker (the
    # run summary reads each worker's own stats); JOBDIR makes Scrapy pickle spider.state. Named in the worker's
    # scrapy_redis_settings_replaced notice (redisspider.replaced_settings).
    if "scrapy_redis" in str(custom.get("STATS_CLASS") or settings.get("STATS_CLASS") or ""):
        s.set("STATS_CLASS", "scrapy.statscollectors.MemoryStatsCollector", priority="cmdline")
    s.set("JOBDIR", None, priority="cmdline")
    probe = s.copy()
    probe.setdict({k: v for k, v in custom.items() if k.startswith("FLEET_HEDGE")}, priority="spider")
    try:  # a bad value is refused at start-up, not at the first request
        hedge_settings(probe)
    except ValueError as exc:
        raise SettingsError(f"spider {getattr(spidercls, 'name', '?')!r}: {exc}") from None
    if redisspider.is_redis_spider(spidercls):
        # scrapy-redis's own pull is replaced by Fleet's start-key feeder (scraper.worker.redisfeed)
        s.set("EXTENSIONS", {**s.getdict("EXTENSIONS"), "scraper.worker.redisfeed.StartFeeder": 500},
              priority="cmdline")
    if rendered and renders(spidercls, s):
        from scraper.worker import render  # imports Playwright: only for the spiders that need it
        render.apply(spidercls, s)
    return s


def _path(component: Any) -> str:
    return component if isinstance(component, str) else f"{component.__module__}.{component.__qualname__}"


def item_pipelines(spidercls: type[Spider], base: dict[str, Any]) -> dict[Any, Any]:
    """The spider's ITEM_PIPELINES merged into Fleet's: ObjectPipeline stays, and stays last.

    A spider that does not mention ObjectPipeline gets it after its own last pipeline (at 1000, or one
    past a pipeline of its own at 1000 or above). A spider may place ObjectPipeline itself but not
    switch it off, and then every pipeline of its own must run before it: a pipeline after it would change
    or drop items whose object already has them. Either is refused (:class:`SettingsError`) rather than
    run with items silently lost or unchanged. A spider's ITEM_PROCESSOR other than Fleet's is refused
    too (it is how ObjectPipeline finds an item's request)."""
    custom = getattr(spidercls, "custom_settings", None) or {}
    name = getattr(spidercls, "name", spidercls.__name__)
    processor = custom.get("ITEM_PROCESSOR")
    if processor is not None and _path(processor) != ITEM_PROCESSOR:
        raise SettingsError(f"spider {name!r}: ITEM_PROCESSOR {_path(processor)} replaces Fleet's {ITEM_PROCESSOR}, "
                            "which maps items to their requests; remove it from custom_settings")
    merged: dict[Any, Any] = dict(base)
    order = merged.get(OBJECT_PIPELINE, OBJECT_PIPELINE_ORDER)
    placed = False  # did the spider place ObjectPipeline itself?
    for comp, value in dict(custom.get("ITEM_PIPELINES") or {}).items():
        if _path(comp) == OBJECT_PIPELINE:
            if value is None:
                raise SettingsError(f"spider {name!r}: ITEM_PIPELINES sets {OBJECT_PIPELINE} to None, so no item "
                                    "would ever be stored; remove that entry (your pipelines go below "
                                    f"{OBJECT_PIPELINE_ORDER})")
            order, placed = value, True
            continue
        merged.setdefault(comp, value)
    if not placed:
        # A spider that does not mention ObjectPipeline runs unchanged: ours goes after its last pipeline
        # (a Scrapy project with a pipeline at 1000 or above must not have to be edited to run here).
        theirs = [v for c, v in merged.items() if c != OBJECT_PIPELINE and isinstance(v, (int, float))]
        if theirs and max(theirs) >= order:
            order = int(max(theirs)) + 1
    merged[OBJECT_PIPELINE] = order
    for comp, value in merged.items():
        if comp != OBJECT_PIPELINE and isinstance(value, (int, float)) and value >= order:
            raise SettingsError(f"spider {name!r}: ITEM_PIPELINES runs {_path(comp)} ({value}) after {OBJECT_PIPELINE} "
                                f"({order}), which hands items to their object: its changes and drops would be "
                                f"lost; give it an order below {order}, or set {OBJECT_PIPELINE} above it")
    return merged


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

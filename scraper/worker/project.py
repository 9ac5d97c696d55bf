"""A Scrapy project's own settings module (``settings.py``) as a layer of a Fleet worker's settings.

Why: scrapy-redis and Scrapy projects keep ``ITEM_PIPELINES``, ``USER_AGENT``, ``REDIS_URL``,
``ROBOTSTXT_OBEY``, ``DOWNLOAD_DELAY``... in their settings module, found through
``SCRAPY_SETTINGS_MODULE`` or the ``[settings]`` section of ``scrapy.cfg``; a spider moved to Fleet
unchanged must find them there. Scrapy's ``get_project_settings`` would *replace* Fleet's settings
module, so the module is read here and applied by ``scraper.worker.catalog.base_settings`` at
:data:`PRIORITY`: above Fleet's defaults (``"project"``), below the spider's ``custom_settings``
(``"spider"``), under the same rules as those (Fleet's mandatory components re-asserted, pipelines
merged before ObjectPipeline, ``SPIDER_MODULES`` added to the spider search).

Where it is looked for, as ``scrapy crawl`` looks: ``SCRAPY_SETTINGS_MODULE``, else ``scrapy.cfg`` in
the working directory (``[settings] default = proj.settings``; ``SCRAPY_PROJECT`` picks another name).
Unlike Scrapy, no parent directory and no user-wide ``~/.scrapy.cfg`` is read: a worker started from
``/`` must not pick up someone's project.
"""

from __future__ import annotations

import configparser
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapy.utils.project import ENVVAR

__all__ = ["FLEET_SETTINGS_MODULE", "PRIORITY", "Project", "ProjectSettingsError", "find", "load"]

#: Between Scrapy's "project" (20: Fleet's own settings module) and "spider" (30: custom_settings).
PRIORITY = 25
#: Fleet's own settings module: never a project layer over itself.
FLEET_SETTINGS_MODULE = "settings"


class ProjectSettingsError(RuntimeError):
    """The project's settings module (or its scrapy.cfg) cannot be read: a configuration error, one line."""


@dataclass(frozen=True)
class Project:
    module: str  # importable name, e.g. "proj.settings"
    source: str  # where it was named: "SCRAPY_SETTINGS_MODULE" or the scrapy.cfg path
    values: dict[str, Any]  # its settings (upper-case names, as Settings.setmodule reads them)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def find(cwd: str | None = None) -> tuple[str, str] | None:
    """(module name, where it was named), or None when there is no project to honour."""
    named = os.environ.get(ENVVAR, "").strip()
    if named:
        return (None if named == FLEET_SETTINGS_MODULE else (named, ENVVAR))
    cfg = Path(cwd or os.getcwd()) / "scrapy.cfg"
    if not cfg.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(cfg, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        raise ProjectSettingsError(f"cannot read {cfg}: {_one_line(str(exc))}") from None
    project = os.environ.get("SCRAPY_PROJECT", "default")
    if not parser.has_option("settings", project):
        return None  # a scrapy.cfg for deploys only (scrapyd): no settings module
    module = parser.get("settings", project).strip()
    return None if module in ("", FLEET_SETTINGS_MODULE) else (module, str(cfg))


def load(cwd: str | None = None) -> Project | None:
    """The project found by :func:`find`, its module imported (its directory must be on sys.path: the
    working directory is, see base_settings). Any failure to import it is a :class:`ProjectSettingsError`."""
    found = find(cwd)
    if found is None:
        return None
    module, source = found
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, SyntaxError, or whatever the module raises at import
        raise ProjectSettingsError(
            f"cannot import the Scrapy project settings module {module!r} (named by {source}): "
            f"{type(exc).__name__}: {_one_line(str(exc))}. Run fleet from the project directory, "
            f"or fix or unset {ENVVAR} (commands that load no spider, such as fleet status, skip the "
            f"project's settings when FLEET_REDIS_URL is set)") from None
    return Project(module, source, {k: getattr(mod, k) for k in dir(mod) if k.isupper()})

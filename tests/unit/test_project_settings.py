"""A Scrapy project's settings module as a layer of a worker's settings (scraper.worker.project, catalog).

Real files: a project directory with scrapy.cfg and a settings module, imported from the working
directory as ``fleet`` imports it. Each test uses a package name of its own (imports are cached).
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scrapy import Spider
from scrapy.settings import Settings

from scraper.infra.config import FleetConfig
from scraper.worker import project as projectmod
from scraper.worker.catalog import OBJECT_PIPELINE, SettingsError, base_settings, worker_settings
from scraper.worker.redisspider import redis_url_setting, replaced_settings

SETTINGS = """
BOT_NAME = "proj"
SPIDER_MODULES = ["{pkg}.spiders"]
USER_AGENT = "proj-bot/1.0"
ROBOTSTXT_OBEY = True
DOWNLOAD_DELAY = 0.25
REDIS_URL = "redis://127.0.0.1:6390/2"
SCHEDULER = "scrapy_redis.scheduler.Scheduler"
DUPEFILTER_CLASS = "scrapy_redis.dupefilter.RFPDupeFilter"
SCHEDULER_PERSIST = True
ITEM_PIPELINES = {{"{pkg}.pipelines.Tag": 300}}
DOWNLOADER_MIDDLEWARES = {{"{pkg}.mw.Mine": 543, "middlewares.classify.ClassifyMiddleware": None}}
"""


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A project directory (the working directory) with scrapy.cfg naming ``<pkg>.settings``."""
    pkg = f"proj_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg / "spiders").mkdir(parents=True)
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "spiders" / "__init__.py").write_text("")
    (tmp_path / pkg / "settings.py").write_text(textwrap.dedent(SETTINGS.format(pkg=pkg)))
    (tmp_path / "scrapy.cfg").write_text(f"[settings]\ndefault = {pkg}.settings\n\n[deploy]\nproject = {pkg}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCRAPY_SETTINGS_MODULE", raising=False)
    monkeypatch.delenv("SCRAPY_PROJECT", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield pkg
    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]


class Plain(Spider):
    name = "plain"


class Custom(Spider):
    name = "custom"
    custom_settings = {"USER_AGENT": "spider-wins/2.0"}


def test_project_layer_between_fleet_and_custom_settings(proj: str) -> None:
    base = base_settings(FleetConfig.from_env())
    assert base["FLEET_PROJECT_SETTINGS"] == f"{proj}.settings"
    assert base["USER_AGENT"] == "proj-bot/1.0" and base.getbool("ROBOTSTXT_OBEY")
    assert base.getfloat("DOWNLOAD_DELAY") == 0.25
    assert f"{proj}.spiders" in base.getlist("SPIDER_MODULES") and "scraper.spiders" in base.getlist("SPIDER_MODULES")
    s = worker_settings(Plain, base)
    # Fleet's mandatory components stay: scheduler, dupefilter, its middleware (not switched off)
    assert s["SCHEDULER"] == "scraper.worker.scheduler.FleetScheduler"
    assert s["DUPEFILTER_CLASS"] == "scrapy.dupefilters.BaseDupeFilter"
    mws = s.getdict("DOWNLOADER_MIDDLEWARES")
    assert mws[f"{proj}.mw.Mine"] == 543 and mws["middlewares.classify.ClassifyMiddleware"] is not None
    pipes = s.getdict("ITEM_PIPELINES")
    assert pipes[f"{proj}.pipelines.Tag"] == 300 and pipes[OBJECT_PIPELINE] > 300  # theirs, then ObjectPipeline
    # the spider's custom_settings win over the project's, as in Scrapy
    s2 = worker_settings(Custom, base_settings(FleetConfig.from_env()))
    Custom.update_settings(s2)
    assert s2["USER_AGENT"] == "spider-wins/2.0"
    assert replaced_settings(Plain, base) == ["SCHEDULER", "DUPEFILTER_CLASS", "SCHEDULER_PERSIST"]
    assert redis_url_setting(Plain, base) == "redis://127.0.0.1:6390/2"
    assert redis_url_setting(Plain, None) is None


def test_settings_module_env_wins_over_scrapy_cfg(proj: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / proj / "other.py").write_text('USER_AGENT = "other/1"\n')
    monkeypatch.setenv("SCRAPY_SETTINGS_MODULE", f"{proj}.other")
    assert base_settings(FleetConfig.from_env())["USER_AGENT"] == "other/1"
    monkeypatch.setenv("SCRAPY_SETTINGS_MODULE", "settings")  # Fleet's own module: no layer over itself
    assert projectmod.find() is None


def test_no_project_no_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCRAPY_SETTINGS_MODULE", raising=False)
    assert projectmod.find() is None
    (tmp_path / "scrapy.cfg").write_text("[deploy]\nurl = http://127.0.0.1:6800/\n")  # deploy-only: no settings
    assert projectmod.find() is None
    assert "FLEET_PROJECT_SETTINGS" not in base_settings(FleetConfig.from_env())


def test_import_error_is_one_line(proj: str, tmp_path: Path) -> None:
    (tmp_path / proj / "settings.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(SettingsError) as exc:
        base_settings(FleetConfig.from_env())
    msg = str(exc.value)
    assert "\n" not in msg and f"{proj}.settings" in msg and "not_a_module_anywhere" in msg and "scrapy.cfg" in msg


@pytest.mark.parametrize("line,needle", [
    ('ITEM_PIPELINES = {"pipelines.objects.ObjectPipeline": None}', "no item would ever be stored"),
    ('ITEM_PROCESSOR = "x.Y"', "ITEM_PROCESSOR x.Y"),
])
def test_project_may_not_lose_items(proj: str, tmp_path: Path, line: str, needle: str) -> None:
    (tmp_path / proj / "settings.py").write_text(line + "\n")
    with pytest.raises(SettingsError, match=needle):
        base_settings(FleetConfig.from_env())


def test_fleet_environment_beats_the_project_and_defaults_do_not(proj: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CONCURRENT_REQUESTS of the project wins over Fleet's default; FLEET_CONCURRENCY set by the operator wins
    over the project; a spider's custom_settings win over both (as before)."""
    settings_py = Path(proj) / "settings.py"
    settings_py.write_text(settings_py.read_text() + "CONCURRENT_REQUESTS = 3\nFLEET_METRICS_PORT = 9999\n")
    monkeypatch.delenv("FLEET_CONCURRENCY", raising=False)
    monkeypatch.delenv("FLEET_METRICS_PORT", raising=False)
    s = base_settings(FleetConfig.from_env())
    assert s.getint("CONCURRENT_REQUESTS") == 3 and s.getint("FLEET_METRICS_PORT") == 9999
    for name in [m for m in sys.modules if m == proj or m.startswith(proj + ".")]:
        del sys.modules[name]
    monkeypatch.setenv("FLEET_CONCURRENCY", "50")
    monkeypatch.setenv("FLEET_METRICS_PORT", "9465")
    s = base_settings(FleetConfig.from_env())
    assert s.getint("CONCURRENT_REQUESTS") == 50 and s.getint("FLEET_METRICS_PORT") == 9465

    class Own(Spider):
        name = "own"
        custom_settings = {"CONCURRENT_REQUESTS": 7}

    ws = worker_settings(Own, s)
    Own.update_settings(ws)  # what Scrapy's Crawler does with custom_settings (priority "spider")
    assert ws.getint("CONCURRENT_REQUESTS") == 7


def test_one_redis_url_for_every_command(proj: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """scraper.cli.common.redis_url_for, used by every command: FLEET_REDIS_URL, else a scrapy-redis spider's
    own REDIS_URL, else the project's (for any spider, and for commands that name none), else embedded."""
    from scraper.cli.common import redis_url_for
    from tests.integration.sredis_spiders import ProductsFromRedis

    class OwnRedis(ProductsFromRedis):
        custom_settings = {"REDIS_URL": "redis://own:6379/1"}

    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    cfg = FleetConfig.from_env()
    assert redis_url_for(cfg) == "redis://127.0.0.1:6390/2"  # fleet status, dlq, ...: no spider
    assert redis_url_for(cfg, Plain) == "redis://127.0.0.1:6390/2"
    assert redis_url_for(cfg, ProductsFromRedis) == "redis://127.0.0.1:6390/2"
    assert redis_url_for(cfg, OwnRedis) == "redis://own:6379/1"
    assert redis_url_for(FleetConfig.from_env({"FLEET_REDIS_URL": "redis://fleet:6379/0"}), OwnRedis) == (
        "redis://fleet:6379/0")


def test_a_plain_projects_redis_url_is_not_fleets(proj: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Scrapy project without scrapy-redis scheduling that names REDIS_URL / REDIS_HOST (for a pipeline of
    its own, say) does not move Fleet's commands onto that Redis; only a scrapy-redis spider of it uses it, as
    scrapy-redis would. fleet demo and fleet smoke (project=False) never follow a project's Redis."""
    from scraper.cli.common import redis_url_for
    from tests.integration.sredis_spiders import ProductsFromRedis

    settings_py = Path(proj) / "settings.py"
    text = settings_py.read_text()
    for line in ('SCHEDULER = "scrapy_redis.scheduler.Scheduler"\n',
                 'DUPEFILTER_CLASS = "scrapy_redis.dupefilter.RFPDupeFilter"\n', "SCHEDULER_PERSIST = True\n"):
        text = text.replace(line, "")
    settings_py.write_text(text + 'REDIS_HOST = "127.0.0.1"\nJOBDIR = "crawls/x"\n')
    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    monkeypatch.setattr("scraper.cli.common.resolve_redis_url", lambda: "embedded://")
    cfg = FleetConfig.from_env()
    assert redis_url_for(cfg) == "embedded://"
    assert redis_url_for(cfg, Plain) == "embedded://"
    assert redis_url_for(cfg, ProductsFromRedis) == "redis://127.0.0.1:6390/2"  # scrapy-redis's own rule


def test_demo_and_smoke_never_follow_a_projects_redis(proj: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from scraper.cli.common import redis_url_for

    monkeypatch.delenv("FLEET_REDIS_URL", raising=False)
    monkeypatch.setattr("scraper.cli.common.resolve_redis_url", lambda: "embedded://")
    assert redis_url_for(FleetConfig.from_env(), project=False) == "embedded://"
    assert redis_url_for(FleetConfig.from_env({"FLEET_REDIS_URL": "redis://f:1/0"}), project=False) == "redis://f:1/0"


POLITENESS_KEYS = ("CONCURRENT_REQUESTS_PER_DOMAIN", "DOWNLOAD_DELAY", "RANDOMIZE_DOWNLOAD_DELAY", "FLEET_DOMAIN_BURST",
                   "AUTOTHROTTLE_ENABLED", "AUTOTHROTTLE_TARGET_CONCURRENCY")


def _as_the_worker_builds_it(spidercls: type[Spider], concurrency: int | None) -> Settings:
    """A worker's settings as ``fleet worker`` builds them: base_settings, worker_settings, --concurrency
    (scraper.cli.worker), then the spider's custom_settings (what Scrapy's Crawler does)."""
    from scraper.cli.worker import concurrency_settings

    s = worker_settings(spidercls, base_settings(FleetConfig.from_env()))
    concurrency_settings(s, concurrency)
    spidercls.update_settings(s)
    return s


def test_project_politeness_gates_fleet_wide_and_fleets_own_layers_do_not(
        proj: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's settings.py feeds the fleet-wide gate (its DOWNLOAD_DELAY = 0.25, then
    ``scrapy startproject``'s CONCURRENT_REQUESTS_PER_DOMAIN = 1 too), the worker's --concurrency default does
    not override it, and a spider's custom_settings beat it. Fleet's own layers (its settings module, FLEET_*
    variables, --concurrency) put no politeness key at the project's priority or above: a project that sets
    none of them is not gated."""
    from scraper.policy.politeness import Politeness

    monkeypatch.setenv("FLEET_CONCURRENCY", "12")  # an operator's value: priority 26, CONCURRENT_REQUESTS only
    p = Politeness.from_settings(_as_the_worker_builds_it(Plain, 8))
    assert p.active and (p.base.limit, p.base.delay, p.base.randomize) == (0, 0.25, True)
    settings_py = Path(proj) / "settings.py"
    settings_py.write_text(settings_py.read_text() + "CONCURRENT_REQUESTS_PER_DOMAIN = 1\n")
    for name in [m for m in sys.modules if m == proj or m.startswith(proj + ".")]:
        del sys.modules[name]
    s = _as_the_worker_builds_it(Plain, 8)
    assert s.getint("CONCURRENT_REQUESTS") == 8 and s.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == 1
    assert (Politeness.from_settings(s).base.limit, Politeness.from_settings(s).base.delay) == (1, 0.25)

    class Quick(Spider):
        name = "quick"
        custom_settings = {"DOWNLOAD_DELAY": 0, "CONCURRENT_REQUESTS_PER_DOMAIN": 4}

    quick = Politeness.from_settings(_as_the_worker_builds_it(Quick, None)).base
    assert (quick.limit, quick.delay) == (4, 0.0)  # the spider's values over the project's

    settings_py.write_text('BOT_NAME = "proj"\nUSER_AGENT = "proj-bot/1.0"\n')  # no politeness key
    for name in [m for m in sys.modules if m == proj or m.startswith(proj + ".")]:
        del sys.modules[name]
    for concurrency in (None, 3):
        s = _as_the_worker_builds_it(Plain, concurrency)
        assert s["FLEET_PROJECT_SETTINGS"] == f"{proj}.settings"
        assert {k: s.getpriority(k) for k in POLITENESS_KEYS if (s.getpriority(k) or 0) >= projectmod.PRIORITY} == {}
        assert not Politeness.from_settings(s).active


"""A Scrapy project's own settings.py honoured by ``fleet run`` / ``fleet worker`` run from its directory.

Real project layout (scrapy.cfg, a package with settings, pipelines and spiders, as ``scrapy startproject``
makes it), real ``fleet`` subprocesses, real redis-server, a loopback site that records each request's
User-Agent. Nothing names the project's modules but its scrapy.cfg: no FLEET_SPIDER_MODULES.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.fleetproc import fleet, fleet_env, objects, wait_all

pytestmark = pytest.mark.integration

FILES = {
    "scrapy.cfg": """
        [settings]
        default = shopproj.settings

        [deploy]
        project = shopproj
    """,
    "shopproj/__init__.py": "",
    "shopproj/settings.py": """
        BOT_NAME = "shopproj"
        SPIDER_MODULES = ["shopproj.spiders"]
        NEWSPIDER_MODULE = "shopproj.spiders"
        USER_AGENT = "shopproj-bot/1.0 (+ops@shop.test)"
        ITEM_PIPELINES = {"shopproj.pipelines.Stamp": 300}
        REDIS_URL = "{redis_url}"
        SCHEDULER = "scrapy_redis.scheduler.Scheduler"
        DUPEFILTER_CLASS = "scrapy_redis.dupefilter.RFPDupeFilter"
        SCHEDULER_PERSIST = True
    """,
    "shopproj/broken.py": """
        import shopproj.no_such_module
    """,
    "shopproj/pipelines.py": """
        class Stamp:
            def process_item(self, item):
                item["stamped"] = "shopproj"
                return item
    """,
    "shopproj/spiders/__init__.py": "",
    "shopproj/spiders/pages.py": """
        import os

        from scrapy import Spider
        from scrapy_redis.spiders import RedisSpider

        BASE = os.environ.get("PROJ_BASE", "http://127.0.0.1:9")


        class Pages(Spider):
            name = "proj_pages"
            start_urls = [BASE + "/"]

            def parse(self, response):
                yield {"url": response.url, "title": response.css("title::text").get()}
                yield from response.follow_all(css="a")


        class FromRedis(RedisSpider):
            name = "proj_redis"

            def parse(self, response):
                yield {"url": response.url, "title": response.css("title::text").get()}
    """,
}


class _Site(ThreadingHTTPServer):
    daemon_threads = True
    agents: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Site

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.agents.append(self.headers.get("User-Agent", ""))
        links = "".join(f'<a href="/p{n}">p{n}</a>' for n in (1, 2, 3)) if self.path == "/" else ""
        body = f"<html><head><title>page {self.path}</title></head><body>{links}</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def site() -> Iterator[_Site]:
    s = _Site(("127.0.0.1", 0), _Handler)
    s.agents = []
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.shutdown()
        s.server_close()


def _project(root: Path, redis_url: str) -> Path:
    proj = root / "proj"
    for name, text in FILES.items():
        p = proj / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).replace("{redis_url}", redis_url).lstrip())
    return proj


def _base(site: _Site) -> str:
    return f"http://127.0.0.1:{site.server_address[1]}"


def test_fleet_run_honours_the_project_settings(redis_url: str, tmp_path: Path, site: _Site) -> None:
    """``fleet run`` from the project directory: its spider found through the project's SPIDER_MODULES,
    its USER_AGENT sent, its pipeline run before Fleet's ObjectPipeline, its scrapy-redis scheduler
    replaced with the one-line notice."""
    proj = _project(tmp_path, redis_url)
    env = fleet_env(redis_url, tmp_path, FLEET_CWD=str(proj), PROJ_BASE=_base(site), FLEET_LOG_FORMAT="json")
    env.pop("FLEET_SPIDER_MODULES", None)
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    res = fleet("run", "proj_pages", "--workers", "1", "--run", "t1", "--idle", "1", env=env, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    items = [i for lines in objects(tmp_path / "data", "items", "proj_pages", "t1").values() for i in lines]
    base = _base(site)
    assert sorted(i["url"] for i in items) == [f"{base}/", *[f"{base}/p{n}" for n in (1, 2, 3)]]
    assert {i["stamped"] for i in items} == {"shopproj"}
    assert site.agents and set(site.agents) == {"shopproj-bot/1.0 (+ops@shop.test)"}
    assert "scrapy_redis_settings_replaced" in res.stderr


def test_fleet_worker_uses_the_project_redis_url(redis_url: str, tmp_path: Path, site: _Site) -> None:
    """A RedisSpider of the project on ``fleet worker`` with FLEET_REDIS_URL unset: the project's REDIS_URL
    is Fleet's Redis, where its start key is read (no embedded server is started)."""
    proj = _project(tmp_path, redis_url)
    env = fleet_env(redis_url, tmp_path, FLEET_REDIS_RUN="w1", FLEET_LOG_FORMAT="json")
    for name in ("FLEET_REDIS_URL", "FLEET_SPIDER_MODULES", "SCRAPY_SETTINGS_MODULE"):
        env.pop(name, None)
    r = redis.Redis.from_url(redis_url)
    base = _base(site)
    r.lpush("proj_redis:start_urls", f"{base}/p1", f"{base}/p2")
    log = tmp_path / "w.log"
    with open(log, "ab") as fh:
        w = subprocess.Popen([sys.executable, "-m", "scraper.cli", "worker", "proj_redis", "--until-idle", "2"],
                             env=env, cwd=proj, stdout=fh, stderr=fh)
    assert wait_all([w], 60) == [0], log.read_text()[-3000:]
    items = [i for lines in objects(tmp_path / "data", "items", "proj_redis", "w1").values() for i in lines]
    assert sorted((i["url"], i["stamped"]) for i in items) == [(f"{base}/p1", "shopproj"), (f"{base}/p2", "shopproj")]
    assert r.llen("proj_redis:start_urls") == 0 and r.exists("fleet:{proj_redis}:runs")
    assert not (tmp_path / "home" / "redis").exists()  # no embedded server was started
    r.close()


def test_a_project_settings_module_that_does_not_import_is_a_config_error(redis_url: str, tmp_path: Path) -> None:
    proj = _project(tmp_path, redis_url)
    env = fleet_env(redis_url, tmp_path, FLEET_CWD=str(proj), SCRAPY_SETTINGS_MODULE="shopproj.broken")
    res = fleet("worker", "proj_pages", env=env, timeout=60)
    assert res.returncode == 1, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "shopproj.broken" in lines[0] and "SCRAPY_SETTINGS_MODULE" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


#: Secrets a project's settings.py may hold: Scrapy's own secret settings (which its "Overridden settings"
#: dump prints when they differ from the default), URL credentials, and the project's own names.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAsecretkeyid0001",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-0002",
    "AWS_SESSION_TOKEN": "aws-session-token-0003",
    "FTP_PASSWORD": "ftp-password-0004",
    "TELNETCONSOLE_PASSWORD": "telnet-password-0005",
    "AWS_ENDPOINT_URL": "https://s3user:endpoint-password-0006@s3.shop.test",
    "API_KEY": "api-key-value-0007",
    "PROXY_AUTH": "proxy-auth-value-0008",
}


def test_debug_settings_dump_never_prints_a_secret(redis_url: str, tmp_path: Path) -> None:
    """``fleet worker`` at FLEET_LOG_LEVEL=DEBUG prints Scrapy's "Overridden settings" dump: the names of the
    project's secret settings are there, their values are not (nor a URL's credentials)."""
    proj = _project(tmp_path, redis_url)
    extra = "".join(f"{name} = {value!r}\n" for name, value in SECRETS.items())
    settings = proj / "shopproj" / "settings.py"
    settings.write_text(settings.read_text() + extra)
    env = fleet_env(redis_url, tmp_path, FLEET_CWD=str(proj), FLEET_LOG_LEVEL="DEBUG", FLEET_LOG_FORMAT="json")
    env.pop("FLEET_SPIDER_MODULES", None)
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    res = fleet("worker", "proj_pages", "--until-idle", "1", env=env, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Overridden settings" in res.stderr
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "FTP_PASSWORD", "TELNETCONSOLE_PASSWORD", "AWS_ENDPOINT_URL"):
        assert name in res.stderr, name
    leaked = [v for v in [*SECRETS.values(), "endpoint-password-0006"] if v in res.stderr or v in res.stdout]
    assert leaked == [], leaked


def test_operator_commands_use_the_project_redis_url(redis_url: str, tmp_path: Path) -> None:
    """FLEET_REDIS_URL unset, run from a scrapy-redis project whose settings.py names REDIS_URL: ``fleet seed``
    queues into that Redis (where ``fleet worker`` works), and ``fleet status`` / ``fleet runs`` report it
    from there, not from an embedded server of their own."""
    proj = _project(tmp_path, redis_url)
    env = fleet_env(redis_url, tmp_path, FLEET_CWD=str(proj), FLEET_LOG_FORMAT="json")
    for name in ("FLEET_REDIS_URL", "FLEET_SPIDER_MODULES", "SCRAPY_SETTINGS_MODULE"):
        env.pop(name, None)
    res = fleet("seed", "proj_pages", "--url", "http://127.0.0.1:9/a", "--url", "http://127.0.0.1:9/b",
                "--run", "s1", env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    r = redis.Redis.from_url(redis_url)
    assert r.zcard("fleet:{proj_pages}:ready") == 2
    r.close()
    res = fleet("status", "--json", env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    status = json.loads(res.stdout)
    assert status["proj_pages"]["ready"] == 2 and "s1" in status["proj_pages"]["runs"], status
    res = fleet("dlq", "proj_pages", "list", env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "home" / "redis").exists()  # no embedded server was started


def test_ignored_autothrottle_keys_of_the_project_are_logged_once(redis_url: str, tmp_path: Path) -> None:
    """AUTOTHROTTLE_START_DELAY / _MAX_DELAY / _DEBUG in the project's settings.py (not the spider's
    custom_settings): the worker names them in one ``politeness_setting_ignored`` line, as it does for a spider's."""
    proj = _project(tmp_path, redis_url)
    settings = proj / "shopproj" / "settings.py"
    settings.write_text(settings.read_text() + "AUTOTHROTTLE_ENABLED = True\nAUTOTHROTTLE_START_DELAY = 2.0\n"
                        "AUTOTHROTTLE_MAX_DELAY = 30.0\nAUTOTHROTTLE_DEBUG = True\n")
    env = fleet_env(redis_url, tmp_path, FLEET_CWD=str(proj), FLEET_LOG_FORMAT="json")
    env.pop("FLEET_SPIDER_MODULES", None)
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    res = fleet("worker", "proj_pages", "--until-idle", "1", env=env, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stderr.splitlines() if "politeness_setting_ignored" in x]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0]["keys"] == ["AUTOTHROTTLE_START_DELAY", "AUTOTHROTTLE_MAX_DELAY", "AUTOTHROTTLE_DEBUG"]
    assert set(lines[0]["set_in"].values()) == {"project"}

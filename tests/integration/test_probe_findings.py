"""What a hostile probe of the documented CLI found (session of 2026-12-07), each end to end through the real
``fleet`` CLI, a real redis-server and a site on 127.0.0.1.

* A YAML spider's page with a malformed link (``http://[::1/``, a port out of range) keeps its items and its
  good links: the bad link is skipped where it is found (it raised out of the callback: class C, parked).
* A 3xx Scrapy leaves unfollowed is refused, not stored as the page: to ``file:`` D ``policy:scheme``,
  without a ``Location`` D ``redirect:bad_location`` (unless its body's meta refresh is followed).
* A link with ``user:pass@`` is refused where it is found (Scrapy's downloader cannot send it: it failed
  four fetches as class A); nothing the CLI prints or the store keeps holds the password.
* A Python spider's output that is no item (``42``) is left out and the page's items are written; NaN is
  written as null (strict JSON); an item with a reference cycle goes to the DLQ (D ``item_unencodable``)
  instead of four fetches as a failed write.
* Durations, worker counts, FLEET_STORE, FLEET_HOME, settings and ``--callback`` that cannot be right are
  one-line errors with exit 1 before anything is seeded; ``breakers reset`` of a domain with no breaker is
  exit 2 and writes nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.fleetproc import fleet, fleet_env, spider_module_env

pytestmark = pytest.mark.integration

SPEC = """\
name: probe_yaml
pages:
  page:
    follow: [{css: "a::attr(href)"}]
    fields: {title: {css: "title::text"}}
"""

SPIDERS = '''
import scrapy


class ProbeOutputs(scrapy.Spider):
    """One page yields a non-item, an item with NaN and a good item; /cycle yields an item holding itself."""

    name = "probe_outputs"

    def parse(self, response):
        if response.url.endswith("/cycle"):
            item = {"title": "cycle"}
            item["self"] = item
            yield item
            return
        yield 42
        yield {"title": "nan", "price": float("nan")}
        yield {"title": "good"}
'''


class _Site(BaseHTTPRequestHandler):
    port = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        p = self.path
        if p == "/tofile":
            self._send(302, b"", {"Location": "file:///etc/passwd"})
        elif p == "/noloc":
            self._send(302, b"")
        elif p == "/noloc-refresh":  # no Location, but a meta refresh: followed, as in Scrapy
            self._send(302, b'<meta http-equiv="refresh" content="0; url=/ok/4">')
        elif p == "/list":
            links = ["/ok/1", "http://[::1/", "http://127.0.0.1:99999/x", "/ok/2",
                     f"http://u:s3cretpw@127.0.0.1:{self.port}/ok/3", "/tofile", "/noloc", "/noloc-refresh"]
            body = "<title>list</title>" + "".join(f'<a href="{h}">x</a>' for h in links)
            self._send(200, body.encode())
        else:
            self._send(200, f"<title>page {p}</title>".encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    _Site.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{_Site.port}"
    server.shutdown()
    server.server_close()


def _items(data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(data.rglob("*.jsonl")) for line in f.read_text().splitlines()]


def _dlq(spider: str, env: dict[str, str]) -> tuple[dict[str, str], str]:
    res = fleet("dlq", spider, "list", "--json", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return {r["url"].rsplit("/", 1)[-1]: r["reason"] for r in json.loads(res.stdout)}, res.stdout


def test_a_hostile_list_page_keeps_its_items_and_refuses_what_cannot_be_fetched(
        redis_url: str, tmp_path: Path, site: str) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "probe.yaml").write_text(SPEC)
    env = fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(tmp_path / "specs"), FLEET_LOG_FORMAT="json")
    (tmp_path / "seeds.txt").write_text(f"{site}/list\n")
    res = fleet("run", "probe_yaml", "--urls", str(tmp_path / "seeds.txt"), "--run", "r1", env=env, timeout=180)
    assert res.returncode == 4, (res.returncode, res.stderr[-3000:])  # drained; two requests in the DLQ
    summary = json.loads(res.stdout)
    assert summary["parked"] == 0 and not summary["breakers_open"], summary
    titles = sorted(i["title"] for i in _items(tmp_path / "data"))
    assert titles == ["list", "page /ok/1", "page /ok/2", "page /ok/4"], titles  # no item of a 302, none of /ok/3
    reasons, text = _dlq("probe_yaml", env)
    assert reasons == {"tofile": "policy:scheme", "noloc": "redirect:bad_location"}, reasons
    everything = text + res.stdout + res.stderr + "".join(
        f.read_text(errors="replace") for f in (tmp_path / "data").rglob("*") if f.is_file() and f.suffix != ".gz")
    assert "s3cretpw" not in everything


def test_outputs_that_are_no_item_nan_and_a_cycle(redis_url: str, tmp_path: Path, site: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "probe_spiders", SPIDERS)
    (tmp_path / "seeds.txt").write_text(f"{site}/page\n{site}/cycle\n")
    res = fleet("run", "probe_outputs", "--urls", str(tmp_path / "seeds.txt"), "--run", "r1", env=env,
                timeout=180)
    assert res.returncode == 4, (res.returncode, res.stderr[-3000:])
    assert json.loads(res.stdout)["outcomes"].get("A", 0) == 0  # no retry of a write that can never succeed
    items = {i["title"]: i for i in _items(tmp_path / "data")}
    assert set(items) == {"nan", "good"} and items["nan"]["price"] is None
    lines = [line for f in (tmp_path / "data").rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert all("NaN" not in line for line in lines)
    reasons, _ = _dlq("probe_outputs", env)
    assert reasons == {"cycle": "item_unencodable"}, reasons


@pytest.mark.parametrize("args,words", [
    (["run", "probe_outputs", "--workers", "100000"], "--workers must be from 1 to"),
    (["run", "probe_outputs", "--idle", "-1"], "--idle must be"),
    (["run", "probe_outputs", "--idle", "nan"], "--idle must be"),
    (["run", "probe_outputs", "--deadline", "nan"], "--deadline must be"),
    (["run", "probe_outputs", "--deadline", "inf"], "--deadline must be"),
    (["worker", "probe_outputs", "--until-idle", "nan"], "--until-idle must be"),
    (["worker", "probe_outputs", "--concurrency", "1000000"], "--concurrency must be from 1 to 4096"),
    (["seed", "probe_outputs", "--url", "http://127.0.0.1:9/", "--callback", "__init__"], "no method"),
    (["seed", "probe_outputs", "--urls", "."], "is a directory"),
])
def test_arguments_that_cannot_be_right_are_one_line_errors_before_any_seed(
        redis_url: str, tmp_path: Path, args: list[str], words: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "probe_spiders", SPIDERS)
    res = fleet(*args, env=env, timeout=60)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert words in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # nothing seeded, nothing recorded


@pytest.mark.parametrize("extra,words", [
    ({"FLEET_STORE": "bogus://x"}, "FLEET_STORE: unsupported store URI"),
    ({"FLEET_STORE": "s3://"}, "FLEET_STORE: s3 URI has no bucket"),
    ({"FLEET_BREAKER_RATE": "5"}, "FLEET_BREAKER_RATE='5' must be <= 1.0"),
    ({"FLEET_LOG_LEVEL": "LOUD"}, "FLEET_LOG_LEVEL='LOUD' is not a level"),
    ({"FLEET_ALERT_WEBHOOK": "not a url"}, "FLEET_ALERT_WEBHOOK is not an http(s) URL"),
])
def test_settings_that_cannot_be_right_stop_a_run_before_it_seeds(
        redis_url: str, tmp_path: Path, extra: dict[str, str], words: str) -> None:
    env = spider_module_env(redis_url, tmp_path, "probe_spiders", SPIDERS, **extra)
    (tmp_path / "seeds.txt").write_text("http://127.0.0.1:9/x\n")
    res = fleet("run", "probe_outputs", "--urls", str(tmp_path / "seeds.txt"), env=env, timeout=60)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert words in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_a_spec_setting_that_is_no_number_and_a_bad_fleet_home(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "bad.yaml").write_text(SPEC.replace("probe_yaml", "probe_badset")
                                                 + "settings: {DOWNLOAD_TIMEOUT: abc}\n")
    env = fleet_env(redis_url, tmp_path, FLEET_SPIDERS_DIR=str(tmp_path / "specs"))
    (tmp_path / "seeds.txt").write_text("http://127.0.0.1:9/x\n")
    res = fleet("run", "probe_badset", "--urls", str(tmp_path / "seeds.txt"), env=env, timeout=60)
    assert res.returncode == 1 and "DOWNLOAD_TIMEOUT='abc' is not a number" in res.stderr, res.stderr[-2000:]
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    (tmp_path / "afile").write_text("")
    env = fleet_env(redis_url, tmp_path, FLEET_HOME=str(tmp_path / "afile"))
    del env["FLEET_REDIS_URL"]  # the embedded Redis lives under FLEET_HOME
    res = fleet("status", env=env, timeout=60)
    assert res.returncode == 1 and "FLEET_HOME" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_breakers_reset_of_a_domain_without_a_breaker_writes_nothing(redis_url: str, tmp_path: Path) -> None:
    env = spider_module_env(redis_url, tmp_path, "probe_spiders", SPIDERS)
    res = fleet("breakers", "reset", "probe_outputs", "nosuch.example", env=env, timeout=60)
    assert res.returncode == 2 and "has no breaker for 'nosuch.example'" in res.stderr, res.stderr[-2000:]
    assert redis.Redis.from_url(redis_url).dbsize() == 0

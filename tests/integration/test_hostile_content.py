"""Hostile content end to end (issue #14): every leased request settles, memory stays bounded.

Real parts only: the real ``fleet seed`` / ``fleet worker --until-idle`` CLI as subprocesses, a real
redis-server, and :class:`tests.hostile.HostileSite` on 127.0.0.1 serving redirect loops, compression
bombs, corrupt encodings, 1 GiB and endless bodies, a slowloris, 10,000 headers and a page linking to a
local file, beside healthy pages. The worker's RSS (with its writer process) is sampled from
``/proc/<pid>/status`` while it runs.

* ``acceptance``: the issue's acceptance case at concurrency 4 (every URL one object or one DLQ entry
  with the expected reason, no local file read, < 600 MB RSS, exits on --until-idle).
* ``bombs32``: concurrency 32 against nothing but bombs, 1 GiB and endless bodies: RSS under the bound
  documented in settings/__init__.py (250 MB + 1.15 x CONCURRENT_REQUESTS x DOWNLOAD_MAXSIZE).
* ``stalls``: a downloader middleware that never returns and a callback that waits far past the
  timeout: the watchdog settles both (class A ``watchdog:stalled``, then the DLQ) and the worker exits.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fleetproc import fleet, fleet_env, start_worker, wait_all
from tests.hostile import HostileSite, bomb

pytestmark = pytest.mark.integration

MiB = 1 << 20
SPIDER = "hostile_content"

SPIDER_MODULE = f'''
import asyncio

import scrapy


class HangMiddleware:
    """A downloader middleware that never returns for /hang/ URLs (a component holding a request)."""

    async def process_request(self, request):
        if "/hang/" in request.url:
            await asyncio.Future()
        return None


class HostileContentSpider(scrapy.Spider):
    """One item per page (token and title required); follows every link on the page."""

    name = "{SPIDER}"
    version = "1"
    required_fields = ("token", "title")
    item_callbacks = ("parse",)
    custom_settings = {{"DOWNLOAD_TIMEOUT": 2, "REDIRECT_MAX_TIMES": 5}}

    def parse(self, response, **kwargs):
        yield {{"token": response.css("h1.token::text").get(), "title": response.css("title::text").get()}}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


class BombSpider(HostileContentSpider):
    name = "{SPIDER}_bombs"
    # long enough for 32 endless bodies to reach DOWNLOAD_MAXSIZE together on a busy 2-core machine
    custom_settings = {{"DOWNLOAD_TIMEOUT": 30}}


class StallSpider(HostileContentSpider):
    name = "{SPIDER}_stalls"
    custom_settings = {{
        "DOWNLOAD_TIMEOUT": 1, "FLEET_WATCHDOG_MARGIN": 1,
        "DOWNLOADER_MIDDLEWARES": {{"hostile_content_spiders.HangMiddleware": 100}},
    }}

    async def parse_slow(self, response, **kwargs):
        await asyncio.sleep(8)  # far past DOWNLOAD_TIMEOUT + margin, then it would yield an item
        yield {{"token": "late", "title": "t"}}

    def parse(self, response, **kwargs):
        if "/ok/slow" in response.url:
            yield response.follow("/ok/slow-callback", callback=self.parse_slow)
        yield from super().parse(response, **kwargs)
'''


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the field after "(comm)" is the state, then the parent pid (comm may contain spaces)
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB (VmRSS from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_kb(p)
        todo += _children(p)
    return total / 1024


class RssSampler(threading.Thread):
    """Samples a process tree's RSS every ``interval`` seconds until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.strip().startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


@dataclass
class Run:
    site: HostileSite
    seeded: list[str]
    exit_code: int
    seconds: float
    peak_rss_mb: float
    rss_samples: int
    log: str
    dlq: list[dict[str, Any]]
    items: dict[str, list[dict[str, Any]]]
    status: dict[str, Any]
    data: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> list[dict[str, Any]]:
        return _json_lines(self.log)

    def dlq_by_path(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.dlq:
            out.setdefault("/" + e["url"].split("/", 3)[3], []).append(e)
        return out

    def items_by_path(self) -> dict[str, list[dict[str, Any]]]:
        return {"/" + u.split("/", 3)[3]: lines for u, lines in self.items.items()}


def _items(data: Path, spider: str, run: str) -> dict[str, list[dict[str, Any]]]:
    base = data / "items" / f"spider={spider}" / f"run={run}"
    out: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(base.rglob("*.jsonl")) if base.exists() else []:
        lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        url = lines[0]["_meta"]["url"]
        assert url not in out, f"two objects for {url}"
        out[url] = lines
    return out


def _crawl(redis_server: Any, tmp: Path, site: HostileSite, spider: str, paths: list[str], *,
           concurrency: int, timeout: float, **env_extra: str) -> Run:
    for enc in ("gzip", "deflate", "br", "zstd"):
        bomb(enc)  # built before the clock starts (seconds of CPU the first time)
    redis_server.start()
    c = redis_server.client()
    c.flushall()
    c.close()
    mod_dir = tmp / "spiders"
    mod_dir.mkdir()
    (mod_dir / "hostile_content_spiders.py").write_text(textwrap.dedent(SPIDER_MODULE))
    env = fleet_env(redis_server.url, tmp, FLEET_SPIDER_MODULES="hostile_content_spiders",
                    FLEET_RETRY_BASE="0.2", FLEET_RETRY_CAP="0.5", FLEET_LEASE_SECONDS="5", **env_extra)
    env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
    urls = [site.url(p) for p in paths]
    (tmp / "urls.txt").write_text("\n".join(urls) + "\n")
    res = fleet("seed", spider, "--urls", str(tmp / "urls.txt"), "--run", "r1", env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    t0 = time.monotonic()
    w = start_worker(spider, env, tmp / "w.log", "--until-idle", "1", "--concurrency", str(concurrency))
    sampler = RssSampler(w.pid)
    sampler.start()
    try:
        (code,) = wait_all([w], timeout)
    finally:
        peak = sampler.stop()
        if w.poll() is None:
            w.kill()
            w.wait()
    seconds = time.monotonic() - t0
    dlq = json.loads(fleet("dlq", spider, "list", "--json", "--limit", "1000", env=env, timeout=60).stdout)
    status = json.loads(fleet("status", spider, "--json", env=env, timeout=60).stdout)[spider]
    return Run(site=site, seeded=urls, exit_code=code, seconds=seconds, peak_rss_mb=peak,
               rss_samples=sampler.samples, log=(tmp / "w.log").read_text(), dlq=dlq,
               items=_items(tmp / "data", spider, "r1"), status=status, data=tmp / "data")


# ------------------------------------------------------------------------------------------------
# the acceptance case: concurrency 4, hostile beside healthy
# ------------------------------------------------------------------------------------------------

SECRET = f"fleet-local-secret-{os.urandom(6).hex()}"

EXPECTED_DEAD = {
    **{f"/loop/{i}": "redirect:loop" for i in range(1, 4)},
    "/pingpong/1/a": "redirect:loop",
    "/chain/1": "redirect:too_many",
    **{f"/bomb/{e}/{i}": "body:too_large" for e in ("gzip", "deflate") for i in (1, 2)},
    "/bomb/br/1": "body:too_large",
    "/bomb/zstd/1": "body:too_large",
    **{f"/corrupt/{e}/1": "body:undecodable" for e in ("gzip", "deflate", "br", "zstd")},
    "/corrupt/gzip/2": "body:undecodable",
    "/huge/1": "body:too_large",
    "/huge/2": "body:too_large",
    "/endless/1": "body:too_large",
    "/endless/2": "body:too_large",
    "/slowloris/1": "exhausted:A",
}
HEALTHY = [f"/ok/{i}" for i in range(1, 11)] + ["/gzip-ok/1", "/gzip-ok/2", "/headers/1", "/links/1"]
ACCEPTANCE_RSS_MB = 600


@pytest.fixture(scope="module")
def acceptance(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("hostile_acceptance")
    secret = tmp / "secret.txt"
    secret.write_text(f"<html><head><title>t</title></head><body><h1 class='token'>{SECRET}</h1></body></html>")
    with HostileSite(link_targets=[f"file://{secret}", "/ok/100"]) as site:
        run = _crawl(redis_server, tmp, site, SPIDER, [*EXPECTED_DEAD, *HEALTHY], concurrency=4, timeout=90,
                     FLEET_RETRY_MAX="1")
        run.extra["secret_path"] = str(secret)
        yield run


def test_acceptance_worker_exits_on_until_idle_with_queues_drained(acceptance: Run) -> None:
    assert acceptance.exit_code == 0, acceptance.log[-3000:]
    assert (acceptance.status["ready"], acceptance.status["inflight"], acceptance.status["delayed"]) == (0, 0, 0)
    assert acceptance.seconds < 60, f"took {acceptance.seconds:.1f}s"


def test_acceptance_every_request_settles_once(acceptance: Run) -> None:
    dead, items = acceptance.dlq_by_path(), acceptance.items_by_path()
    for path, entries in dead.items():
        assert len(entries) == 1, (path, entries)
    assert not set(dead) & set(items), "a URL is both an object and a DLQ entry"
    for path, reason in EXPECTED_DEAD.items():
        assert path in dead, f"{path} should be dead-lettered; objects: {sorted(items)}"
        assert dead[path][0]["reason"] == reason, (path, dead[path][0])
    for path in [*HEALTHY, "/ok/100"]:
        assert path in items, f"{path} should be an object; DLQ says {dead.get(path)}"
        (item,) = items[path]
        assert item["token"] and item["title"] == "t", item
    assert items["/gzip-ok/1"][0]["token"] == "gzip-1", "a gzip page reaches the callback decoded"


def test_acceptance_evidence_names_sizes_and_encodings(acceptance: Run) -> None:
    dead = {p: e[0] for p, e in acceptance.dlq_by_path().items()}
    for enc in ("gzip", "deflate", "br", "zstd"):
        detail = dead[f"/bomb/{enc}/1"]["detail"]
        assert f"encoding={enc}" in detail and "decompressed>" in detail and f"limit={32 * MiB}" in detail, detail
        assert dead[f"/bomb/{enc}/1"]["status"] == "200"
        assert f"encoding={enc}" in dead[f"/corrupt/{enc}/1"]["detail"], dead[f"/corrupt/{enc}/1"]
    assert f"content_length={1024 * MiB}" in dead["/huge/1"]["detail"], dead["/huge/1"]
    assert f"received>{32 * MiB}" in dead["/endless/1"]["detail"], dead["/endless/1"]
    assert "hops=1 back_to_hop=0" in dead["/loop/1"]["detail"], dead["/loop/1"]
    assert dead["/loop/1"]["status"] == "302"
    assert "hops=2 back_to_hop=0" in dead["/pingpong/1/a"]["detail"], dead["/pingpong/1/a"]
    assert "limit=5" in dead["/chain/1"]["detail"], dead["/chain/1"]
    for path, reason in EXPECTED_DEAD.items():
        attempts = json.loads(dead[path]["attempts"])
        if reason == "exhausted:A":
            assert attempts == {"A": 2}, dead[path]
        else:  # one D ends it; on a loaded host a slow stream may first time out once (A, within FLEET_RETRY_MAX=1)
            assert attempts.get("D") == 1 and set(attempts) <= {"A", "D"} and attempts.get("A", 0) <= 1, dead[path]


def test_acceptance_hostile_bodies_are_cut_off_not_read(acceptance: Run) -> None:
    # the worker closed the connection after DOWNLOAD_MAXSIZE (plus what was in flight), never read 1 GiB
    for path in ("/endless/1", "/endless/2"):
        assert acceptance.site.sent_bytes.get(path, 0) < 256 * MiB, acceptance.site.sent_bytes
    # a redirect loop is seen on its first repeat: one request per hop, not REDIRECT_MAX_TIMES of them
    assert len(acceptance.site.hits_for("/loop/1")) == 1
    assert len(acceptance.site.hits_for("/pingpong/1/a")) == 1


def test_acceptance_reads_no_local_file(acceptance: Run) -> None:
    for p in acceptance.data.rglob("*"):
        if p.is_file():
            raw = p.read_bytes()
            assert SECRET.encode() not in raw, f"{p} holds the local file's content"
    assert SECRET not in acceptance.log
    assert not any(SECRET in json.dumps(e) for e in acceptance.dlq)


def test_acceptance_rss_bounded(acceptance: Run) -> None:
    print(f"acceptance: peak RSS {acceptance.peak_rss_mb:.0f} MB over {acceptance.rss_samples} samples, "
          f"{acceptance.seconds:.1f}s")
    assert acceptance.rss_samples > 10
    assert acceptance.peak_rss_mb < ACCEPTANCE_RSS_MB, f"peak RSS {acceptance.peak_rss_mb:.0f} MB"


def test_acceptance_every_dead_request_is_logged(acceptance: Run) -> None:
    dead_fps = {e["fp"] for e in acceptance.events if e.get("event") == "request_dead"}
    assert {e["fp"] for e in acceptance.dlq} <= dead_fps


# ------------------------------------------------------------------------------------------------
# concurrency 32 against nothing but bombs and 1 GiB bodies
# ------------------------------------------------------------------------------------------------

BOMBS32 = ([f"/bomb/{e}/{i}" for e in ("gzip", "deflate", "br", "zstd") for i in range(8)]
           + [f"/huge/{i}" for i in range(16)] + [f"/endless/{i}" for i in range(32)])
# the bound documented in settings/__init__.py: 250 MB + 1.15 x CONCURRENT_REQUESTS x DOWNLOAD_MAXSIZE
BOMBS32_RSS_MB = 250 + 1.15 * 32 * 32 * MiB / 1e6


@pytest.fixture(scope="module")
def bombs32(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("hostile_bombs32")
    with HostileSite() as site:
        yield _crawl(redis_server, tmp, site, f"{SPIDER}_bombs", BOMBS32, concurrency=32, timeout=90)


def test_bombs_at_concurrency_32_stay_under_the_documented_bound(bombs32: Run) -> None:
    print(f"bombs32: peak RSS {bombs32.peak_rss_mb:.0f} MB over {bombs32.rss_samples} samples, "
          f"{bombs32.seconds:.1f}s")
    assert bombs32.exit_code == 0, bombs32.log[-3000:]
    assert bombs32.rss_samples > 10
    assert bombs32.peak_rss_mb < BOMBS32_RSS_MB, f"peak RSS {bombs32.peak_rss_mb:.0f} MB"
    dead = bombs32.dlq_by_path()
    assert set(dead) == set(BOMBS32), sorted(set(BOMBS32) - set(dead))
    assert {e[0]["reason"] for e in dead.values()} == {"body:too_large"}
    assert bombs32.items == {}


# ------------------------------------------------------------------------------------------------
# the watchdog: requests held without progress
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stalls(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("hostile_stalls")
    with HostileSite() as site:
        yield _crawl(redis_server, tmp, site, f"{SPIDER}_stalls", ["/hang/1", "/hang/2", "/ok/slow", "/ok/1"],
                     concurrency=4, timeout=60, FLEET_RETRY_MAX="0")


def test_watchdog_settles_requests_held_without_progress(stalls: Run) -> None:
    dead = {p: e[0] for p, e in stalls.dlq_by_path().items()}
    for path, phase in (("/hang/1", "middleware"), ("/hang/2", "middleware"), ("/ok/slow-callback", "scraping")):
        assert path in dead, (path, sorted(dead))
        entry = dead[path]
        assert entry["reason"] == "exhausted:A", entry
        assert entry["detail"].startswith("watchdog:stalled: phase=" + phase), entry
        assert json.loads(entry["attempts"]) == {"A": 1}
    stalled = [e for e in stalls.events if e.get("event") == "request_stalled"]
    assert len(stalled) == 3, stalled
    assert all(2.0 <= e["idle_s"] < 15.0 and e["limit_s"] == 2.0 for e in stalled), stalled  # loose: a loaded host
    items = stalls.items_by_path()
    assert set(items) == {"/ok/slow", "/ok/1"}, sorted(items)


def test_watchdog_worker_still_exits_when_idle(stalls: Run) -> None:
    assert stalls.exit_code == 0, stalls.log[-3000:]
    assert (stalls.status["ready"], stalls.status["inflight"], stalls.status["delayed"]) == (0, 0, 0)
    assert stalls.seconds < 40, f"took {stalls.seconds:.1f}s"

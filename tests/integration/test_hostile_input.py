"""Issue #14 items 3, 4 and 6 through the real CLI, a real redis-server and a real site on 127.0.0.1.

* A crawled page that links to ``file://`` (and ftp, data, javascript, host-less URLs) makes the worker
  read no local file, with the default FLEET_ALLOW_PRIVATE=1; a queue entry for a file:// URL is refused
  before any download (class D ``policy:scheme``), never retried.
* Poison queue entries (a URL Scrapy rejects, a fingerprint that is not hex, run or spider names that
  cannot be keys, callbacks the spider does not have) land in the DLQ as ``bad_envelope`` and the healthy
  requests leased in the same batch are fetched, written and acknowledged.
* Configuration and input mistakes are one-line errors with the README's exit codes.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis

from scraper.queue.envelope import Envelope
from tests import loopback
from tests.fleetproc import counts, fleet, fleet_env, fleet_json, start_worker, wait_all

pytestmark = pytest.mark.integration

SPIDER = "linkshop"
PREFIX = f"fleet:{{{SPIDER}}}:"
SECRET = "fleet-secret-7f3a9c"  # the content of a local file no crawl may read

SPIDER_MODULE = f'''
import scrapy
from scrapy.linkextractors import LinkExtractor


class LinkSpider(scrapy.Spider):
    """Follows every link LinkExtractor finds (it keeps file:// and ftp:// links), plus two requests
    Scrapy accepts but Fleet must not fetch; one item per page with the page's text."""

    name = "{SPIDER}"

    def parse(self, response):
        for link in LinkExtractor().extract_links(response):
            yield scrapy.Request(link.url, callback=self.parse_item)
        yield scrapy.Request("data:text/plain,{SECRET}", callback=self.parse_item)
        yield scrapy.Request("http:///nohost", callback=self.parse_item)

    def parse_item(self, response):
        yield {{"url": response.url, "text": response.text[:500]}}
'''


class _Site:
    """An index page linking to a local file and other schemes, and two item pages; records hits."""

    def __init__(self, secret_file: Path) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits.append(self.path)
                if self.path == "/index.html":
                    body = (f'<html><body><a href="file://{secret_file}">notes</a>'
                            f'<a href="ftp://127.0.0.1:{site.port}/x">ftp</a>'
                            '<a href="javascript:alert(1)">js</a>'
                            '<a href="/item/1.html">one</a><a href="/item/2.html">two</a></body></html>')
                elif self.path.startswith("/item/"):
                    body = f"<html><body><h1>item {self.path}</h1></body></html>"
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = loopback.serve(Handler, daemon_threads=True)
        self.port = self.httpd.server_address[1]
        self.url = loopback.base_url(self.httpd)

    def close(self) -> None:
        loopback.stop(self.httpd)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[_Site]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    s = _Site(secret)
    try:
        yield s
    finally:
        s.close()


def _env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    mod_dir = tmp_path / "userpkg"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "link_spiders.py").write_text(textwrap.dedent(SPIDER_MODULE))
    env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES="link_spiders", FLEET_LEASE_SECONDS="5")
    env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
    env.pop("FLEET_ALLOW_PRIVATE", None)  # the default (1): the scheme allow-list alone must hold
    env.pop("FLEET_SCHEMES", None)
    env["FLEET_STATS_FILE"] = str(tmp_path / "worker-stats.json")
    env.update(extra)
    return env


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def _stats(log: Path) -> dict[str, Any]:
    """The worker's final fleet/* stats, which it writes to FLEET_STATS_FILE (set by _env) on exit."""
    return dict(json.loads((log.parent / "worker-stats.json").read_text()))


def _dlq(client: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(PREFIX + "dlq")]


def _files_text(root: Path) -> str:
    import gzip

    out = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            out.append((gzip.decompress(data) if p.suffix == ".gz" else data).decode("utf-8", "replace"))
    return "\n".join(out)


def _inject(client: redis.Redis, entries: dict[str, str | bytes]) -> None:
    """Queue raw entries the way the Lua scripts store them (env hash + READY), bypassing every check."""
    for i, (eid, raw) in enumerate(entries.items()):
        client.hset(PREFIX + "env", eid, raw)
        client.zadd(PREFIX + "ready", {eid: -i})
    client.sadd("fleet:spiders", SPIDER)


def test_a_page_linking_to_file_reads_no_local_file(redis_url: str, tmp_path: Path, site: _Site) -> None:
    """The acceptance test of item 3: links to file://, ftp://, data: and a host-less URL on a crawled page
    are skipped and counted (never queued, never retried), a queue entry for a file:// URL goes to the
    DLQ as D policy:scheme without being fetched, and the local file's content is nowhere: not in the
    objects, not in Redis."""
    env = _env(redis_url, tmp_path)
    assert fleet_json("seed", SPIDER, "--run", "f1", "--url", f"{site.url}/index.html", env=env)["enqueued"] == 1
    client = redis.Redis.from_url(redis_url)
    try:
        queued = Envelope.for_url(f"file://{tmp_path / 'secret.txt'}", spider_name=SPIDER, run="f1")
        _inject(client, {"filequeued0000001": queued.dumps()})
        log = tmp_path / "w.log"
        assert wait_all([start_worker(SPIDER, env, log, "--until-idle", "2")], 120) == [0]
        dlq = _dlq(client)
        assert [(d["reason"], d["class"]) for d in dlq] == [("policy:scheme", "D")], dlq
        assert json.loads(dlq[0]["attempts"]) == {"D": 1}  # refused on its first delivery, never retried
        assert counts(redis_url, SPIDER) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 1}
        status = fleet_json("status", SPIDER, "--json", env=env)[SPIDER]["runs"]["f1"]
        assert status == {"seen": 3, "done": 3}  # the index and its two http items; nothing else queued
        redis_text = "\n".join(str(client.dump(k)) for k in client.keys("*"))
    finally:
        client.close()
    assert sorted(site.hits) == ["/index.html", "/item/1.html", "/item/2.html"]
    stats = _stats(log)
    assert stats.get("fleet/discovered_refused") == 4, stats  # file://, ftp://, data:, http:///nohost
    # nothing refused was retried (it was never queued); an http page may meet a transient network error on a
    # loaded host (a connection lost before the response: class A, retried, fetched once: site.hits above)
    delayed = [e for e in _events(log) if e.get("event") == "request_delayed"]
    assert all(e["cls"] == "A" and e["reason"].startswith("net:") for e in delayed), delayed
    assert stats.get("fleet/retried", 0) == len(delayed)
    refused = [e for e in _events(log) if e.get("event") == "request_refused"]
    assert sorted(e["reason"] for e in refused) == ["policy:bad_url"] + ["policy:scheme"] * 3
    text = _files_text(tmp_path / "data")
    assert "item /item/1.html" in text  # the http pages were written
    assert SECRET not in text and SECRET not in redis_text


def test_fleet_schemes_widens_and_allow_private_still_refuses(redis_url: str, tmp_path: Path, site: _Site) -> None:
    """FLEET_SCHEMES=http,https,file is the only way file:// is fetched; FLEET_ALLOW_PRIVATE=0 refuses
    every scheme but http(s) whatever FLEET_SCHEMES says."""
    env = _env(redis_url, tmp_path, FLEET_SCHEMES="http,https,file", FLEET_ALLOW_PRIVATE="0")
    client = redis.Redis.from_url(redis_url)
    try:
        queued = Envelope.for_url(f"file://{tmp_path / 'secret.txt'}", spider_name=SPIDER, run="f2")
        _inject(client, {"filequeued0000002": queued.dumps()})
        log = tmp_path / "w.log"
        assert wait_all([start_worker(SPIDER, env, log, "--until-idle", "1")], 120) == [0]
        assert [d["reason"] for d in _dlq(client)] == ["policy:private_address"]
    finally:
        client.close()
    assert SECRET not in _files_text(tmp_path / "data")


def test_poison_entries_do_not_hold_up_their_batch(redis_url: str, tmp_path: Path, site: _Site) -> None:
    """The acceptance test of item 4: one lease batch of two healthy requests and eight poison entries.
    Every poison entry lands in the DLQ as bad_envelope with its reason; the healthy two are fetched,
    written, recorded DONE and acknowledged; nothing stays in flight and the worker exits 0."""
    env = _env(redis_url, tmp_path)

    def entry(**changes: Any) -> str:
        data = Envelope.for_url(f"{site.url}/item/9.html", spider_name=SPIDER, run="p1").to_dict()
        data.update(changes)
        return json.dumps(data)

    good = [Envelope.for_url(f"{site.url}/item/{i}.html", spider_name=SPIDER, run="p1") for i in (1, 2)]
    good[1].callback = "parse_item"
    poison = {
        "poison-js": entry(url="javascript:alert(1)"),
        "poison-fp": entry(fp="zzzzzzzzzzzzzzzz"),
        "poison-run": entry(run="../../etc"),
        "poison-spider": entry(spider="other_spider"),
        "poison-cb": entry(callback="no_such_callback"),
        "poison-close": entry(callback="close"),
        "poison-nohost": entry(url="http:///nohost"),
        "poison-nan": entry(depth=0).replace('"depth": 0', '"depth": NaN'),
    }
    client = redis.Redis.from_url(redis_url)
    try:
        entries: dict[str, str | bytes] = {"good-1": good[0].dumps(), **poison, "good-2": good[1].dumps()}
        _inject(client, entries)
        log = tmp_path / "w.log"
        assert wait_all([start_worker(SPIDER, env, log, "--until-idle", "2")], 120) == [0]
        dlq = _dlq(client)
        details = " | ".join(d["detail"] for d in dlq)
        assert sorted(d["reason"] for d in dlq) == ["bad_envelope"] * len(poison), details
        for words in ("javascript", "hex", "run id", "other_spider", "no_such_callback", "'close'", "no host",
                      "NaN"):
            assert words in details, (words, details)
        # a bad entry whose run id is usable counts for that run (fleet run's exit 4)
        assert sum(1 for d in dlq if d["run"] == "p1") == len(poison) - 2  # not the bad run id, not the NaN
        assert counts(redis_url, SPIDER) == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": len(poison)}
        # LEASE's only field left: its encoding mark (lua/_helpers.lua: big_encoding)
        assert client.hlen(PREFIX + "env") == 0 and set(client.hkeys(PREFIX + "lease")) <= {b"~"}
        assert client.hget(PREFIX + "done:p1", "count") == b"2"  # DONE recorded for the healthy two only
    finally:
        client.close()
    assert sorted(site.hits) == ["/item/1.html", "/item/2.html"]
    acked = [e for e in _events(log) if e.get("event") == "request_acked"]
    assert sorted(e["fp"] for e in acked) == sorted(g.fp for g in good)
    assert "settle_error" not in log.read_text()
    assert "item /item/2.html" in _files_text(tmp_path / "data" / "items")  # parse_item's object
    assert "item /item/1.html" in _files_text(tmp_path / "data" / "raw")  # parse yields no item, the page is kept


def test_seed_rejects_bad_urls_one_line_each(redis_url: str, tmp_path: Path) -> None:
    """`fleet seed` with a file holding bad lines: each is rejected with one line on stderr, the valid URLs
    are still enqueued, the JSON counts them, and the exit code is 2."""
    env = fleet_env(redis_url, tmp_path)
    f = tmp_path / "urls.txt"
    f.write_bytes(b"http://127.0.0.1:9/a\n\xff\xfe not utf-8\nfile:///etc/hostname\nftp://127.0.0.1/x\n"
                  b"javascript:alert(1)\nhttp:///nohost\nhttp://exa mple.com/\n" + b"h" * 20000 + b"\n"
                  b"http://u:hunter2@127.0.0.1:99999/\nhttp://127.0.0.1:9/b\n")
    res = fleet("seed", "demo_shop", "--run", "s1", "--urls", str(f), env=env)
    assert res.returncode == 2, res.stderr
    assert json.loads(res.stdout) == {"spider": "demo_shop", "run": "s1", "enqueued": 2, "skipped": 0,
                                      "rejected": 8}
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 8 and all(x.startswith("rejected ") for x in lines), res.stderr
    assert "line 2: not UTF-8" in lines[0] and "line 8: longer than" in lines[6]
    assert "Traceback" not in res.stderr and "hunter2" not in res.stderr
    # the same through stdin and --url; a run id that cannot be a key is refused before anything is read
    res = fleet("seed", "demo_shop", "--run", "s1", "--urls", "-", "--url", "gopher://x/", env=env,
                stdin="http://127.0.0.1:9/c\n")
    assert res.returncode == 2 and json.loads(res.stdout)["enqueued"] == 1
    res = fleet("seed", "demo_shop", "--run", "../x", "--url", "http://127.0.0.1:9/d", env=env)
    assert res.returncode == 2 and "Invalid value for '--run'" in res.stderr
    assert counts(redis_url, "demo_shop")["ready"] == 3


@pytest.mark.parametrize("args,extra,code,words", [
    (["status"], {"FLEET_REDIS_URL": "notaurl://x"}, 1, "must start with redis://"),
    (["status"], {"FLEET_REDIS_URL": "redis://u:hunter2@127.0.0.1:abc/0"}, 1, "not a valid Redis URL"),
    (["worker", "demo_shop"], {"FLEET_PROXIES": "http://u:hunter2@[::1"}, 1, "FLEET_PROXIES entry 1"),
    (["proxies"], {"FLEET_PROXIES": "http://u:hunter2@h:99999"}, 1, "FLEET_PROXIES entry 1"),
    (["seed", "demo_shop", "--url", "http://a.test/"], {"FLEET_SCHEMES": "gopher"}, 1, "FLEET_SCHEMES"),
    (["seed", "demo_shop", "--url", "http://a.test/[/]x", "--callback", "[/]"], {}, 1, "no method '[/]'"),
    (["export", "demo_shop", "--run", "a/b"], {}, 2, "Invalid value for '--run'"),
])
def test_configuration_mistakes_are_one_line_errors(redis_url: str, tmp_path: Path, args: list[str],
                                                    extra: dict[str, str], code: int, words: str) -> None:
    env = fleet_env(redis_url, tmp_path, **extra)
    res = fleet(*args, env=env, timeout=60)
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    assert words in res.stderr and "Traceback" not in res.stderr and "hunter2" not in res.stderr
    if code != 2:  # typer's own usage box (exit 2) is several lines; our errors are one
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_rediss_to_a_plain_redis_is_one_line_exit_3(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path, FLEET_REDIS_URL=redis_url.replace("redis://", "rediss://"))
    res = fleet("status", env=env, timeout=60)
    assert res.returncode == 3, res.stderr
    assert "cannot reach Redis" in res.stderr and "TLS" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_evicting_redis_is_a_configuration_error(redis_server: Any, redis_url: str, tmp_path: Path) -> None:
    """README's table: configuration errors exit 1 (an evicting Redis is one; it was refused with 3)."""
    client = redis_server.client()
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        res = fleet("status", env=fleet_env(redis_url, tmp_path), timeout=60)
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert res.returncode == 1, res.stderr
    assert "maxmemory-policy=allkeys-lru" in res.stderr and "Traceback" not in res.stderr


def test_fleet_run_reports_rejected_urls_with_exit_2(redis_url: str, tmp_path: Path, demo_site: Any) -> None:
    """`fleet run --urls` with a rejected line crawls the rest, says how many were rejected, and exits 2
    (4 would win if something had ended in the DLQ, 3 if a worker had failed)."""
    env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=demo_site.start_url)
    f = tmp_path / "urls.txt"
    f.write_text(f"{demo_site.product_urls()[0]}\nfile:///etc/hostname\n")
    res = fleet("run", "demo_shop", "--urls", str(f), "--run", "rr1", "--idle", "1", env=env, timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert (summary["seeded"], summary["rejected"], summary["done"], summary["dlq"]) == (1, 1, 1, 0)
    assert "rejected URL 'file:///etc/hostname'" in res.stderr

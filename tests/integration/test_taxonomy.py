"""The failure taxonomy end to end (issue #4): a hostile site behind three authenticated proxies.

One crawl (module fixture) drives the real CLI — ``fleet seed`` and two ``fleet worker --until-idle``
processes — against :class:`tests.hostile.HostileSite` through three :class:`tests.hostile.ForwardProxy`
instances with credentials. The tests then read what the run left behind: objects, the DLQ, the
workers' JSON logs (the recorded retry schedule), the site's hit log (which proxy carried what, when),
``fleet proxies --json`` and a dump of every Redis key.

Target domains (the proxies resolve ``*.test`` and ``localhost`` to 127.0.0.1, so one loopback site plays
several sites; the worker never resolves a target host when it goes through a proxy):

* ``127.0.0.1``   ok pages, ``/ban-by-proxy`` (proxy p1 is banned here), 404/410/401, reset, timeout;
  more ``/ban-by-proxy`` pages, twelve at a time, while p1 has not met one yet (see ``_until_p1_banned``)
* ``localhost``   ``/ban-by-proxy`` where p1 is *not* banned (seeded after p1's first ban)
* ``burst.test``  ten ``/flaky503`` pages (one 503 each): one domain-hold step, not ten
* ``rate.test``   one ``/rate`` page: 429 with ``Retry-After: 7`` once
* ``captcha.test`` one CAPTCHA page served with 200 (its own domain: a challenge bans every proxy it
  meets there, which would stall the other URLs of a shared domain for up to a minute)
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from scraper.worker.proxies import proxy_id
from tests.fleetproc import fleet, fleet_env, start_worker, wait_all, wait_for
from tests.hostile import ForwardProxy, HostileSite

pytestmark = pytest.mark.integration

SPIDER = "hostile"
RUN = "tx1"
RETRY_BASE, RETRY_CAP, RETRY_MAX, ROTATE_MAX = 0.2, 1.0, 3, 2
DOWNLOAD_TIMEOUT = 2
RETRY_AFTER = 7
PREFIX = f"fleet:{{{SPIDER}}}:"
# a page that times out like /slow/1, but whose URL happens to contain the word "proxy"
PROXY_WORD_TIMEOUT = "/slow/proxy-guide"
# /ban-by-proxy pages on 127.0.0.1 are seeded BAN_ROUND at a time, at most BAN_ROUNDS times, until p1 met one
BAN_ROUND, BAN_ROUNDS = 12, 6

SPIDER_MODULE = f'''
import scrapy


class HostileSpider(scrapy.Spider):
    """One item per page: the token heading and the title (both required)."""

    name = "{SPIDER}"
    version = "1"
    required_fields = ("token", "title")
    item_callbacks = ("parse",)
    custom_settings = {{"DOWNLOAD_TIMEOUT": {DOWNLOAD_TIMEOUT}}}

    def parse(self, response, **kwargs):
        yield {{"token": response.css("h1.token::text").get(), "title": response.css("title::text").get()}}


class DeadProxySpider(HostileSpider):
    name = "{SPIDER}_dead"
'''


@dataclass
class Crawl:
    site: HostileSite
    proxies: list[ForwardProxy]
    env: dict[str, str]
    tmp: Path
    redis_url: str
    seeded: list[str]
    ban_pages: list[str]  # every /ban-by-proxy page on 127.0.0.1 (the domain where p1 is banned)
    secrets: list[str]
    worker_logs: list[str]
    events: list[dict[str, Any]]
    cli_output: list[str] = field(default_factory=list)
    dlq: list[dict[str, Any]] = field(default_factory=list)
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # url -> item lines
    proxies_report: list[dict[str, Any]] = field(default_factory=list)
    proxies_report_at: tuple[float, float] = (0.0, 0.0)
    mid_report: list[dict[str, Any]] = field(default_factory=list)  # `fleet proxies` soon after p1's ban
    mid_report_at: tuple[float, float] = (0.0, 0.0)
    redis_dump: list[bytes] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    def cli(self, *args: str, ok: bool = True) -> str:
        res = fleet(*args, env=self.env, timeout=60)
        self.cli_output += [res.stdout, res.stderr]
        if ok:
            assert res.returncode == 0, f"fleet {' '.join(args)} -> {res.returncode}\n{res.stderr[-3000:]}"
        return res.stdout

    def pid(self, name: str) -> str:
        return next(proxy_id(p.url) for p in self.proxies if p.name == name)

    def name_of(self, pid: str | None) -> str | None:
        return next((p.name for p in self.proxies if proxy_id(p.url) == pid), None)

    def dlq_by_url(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.dlq:
            out.setdefault(e["url"], []).append(e)
        return out

    def fp_to_url(self) -> dict[str, str]:
        m = {lines[0]["_meta"]["fingerprint"]: url for url, lines in self.items.items()}
        m.update({e["fp"]: e["url"] for e in self.dlq})
        return m

    def delayed(self, url: str) -> list[dict[str, Any]]:
        fps = {fp for fp, u in self.fp_to_url().items() if u == url}
        return [e for e in self.events if e.get("event") == "request_delayed" and e.get("fp") in fps]


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _dump_redis(url: str) -> list[bytes]:
    """Every key name and every value of every key, as bytes (strings, hashes, sets, zsets, lists, streams)."""
    c = redis.Redis.from_url(url)
    out: list[bytes] = []
    try:
        for key in c.scan_iter(count=1000):
            out.append(key)
            kind = c.type(key).decode()
            if kind == "string":
                out.append(c.get(key) or b"")
            elif kind == "hash":
                for k, v in c.hgetall(key).items():
                    out += [k, v]
            elif kind == "set":
                out += list(c.smembers(key))
            elif kind == "zset":
                out += [m for m, _ in c.zrange(key, 0, -1, withscores=True)]
            elif kind == "list":
                out += list(c.lrange(key, 0, -1))
            elif kind == "stream":
                for _id, fields in c.xrange(key):
                    for k, v in fields.items():
                        out += [k, v]
    finally:
        c.close()
    return out


def _until_p1_banned(cr: Crawl, procs: list[Any], first_round: list[str]) -> None:
    """Wait until p1 has answered 403 on a 127.0.0.1 ban page, seeding more such pages while it has not.

    Which proxy serves a page is a power-of-two choice on latency x load, so p1 may simply not be picked
    for any of a round's pages. A round is over when p1 met one of them (403) or every one of them was
    served (200, through p2 or p3): then, if p1 has not met one, twelve fresh pages go in; bounded."""
    site = cr.site

    def p1_banned() -> bool:
        return any(h.status == 403 for h in site.hits_for(proxy="p1", host="127.0.0.1"))

    def over(pages: list[str]) -> bool:
        if any(p.poll() is not None for p in procs):
            return True  # a worker exited: nothing more will be fetched (reported below)
        served = {h.path for h in site.hits_for(host="127.0.0.1") if h.status == 200}
        return p1_banned() or {"/" + u.split("/", 3)[3] for u in pages} <= served

    pages = list(first_round)
    for rnd in range(BAN_ROUNDS):
        # the first round includes the workers' start-up (seconds on a loaded host); later ones a CLI call
        assert wait_for(lambda pages=pages: over(pages), 60 if rnd == 0 else 30), \
            f"round {rnd}: {len(pages)} ban pages neither served nor met by p1"
        if p1_banned():
            return
        assert all(p.poll() is None for p in procs), \
            f"a worker exited before p1 met a ban page (round {rnd}): {[p.poll() for p in procs]}"
        n = len(cr.ban_pages)
        pages = [site.url(f"/ban-by-proxy/{i}") for i in range(n, n + BAN_ROUND)]
        cr.ban_pages += pages
        cr.seeded += pages
        path = cr.tmp / f"ban-round-{rnd + 1}.txt"
        path.write_text("\n".join(pages) + "\n")
        out = json.loads(cr.cli("seed", SPIDER, "--urls", str(path), "--run", RUN))
        assert out["enqueued"] == len(pages)
    raise AssertionError(f"p1 met none of {len(cr.ban_pages)} ban pages in {BAN_ROUNDS} rounds")


def _items(data: Path) -> dict[str, list[dict[str, Any]]]:
    base = data / "items" / f"spider={SPIDER}" / f"run={RUN}"
    out: dict[str, list[dict[str, Any]]] = {}
    for p in sorted(base.rglob("*.jsonl")) if base.exists() else []:
        lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        url = lines[0]["_meta"]["url"]
        assert url not in out, f"two objects for {url}"
        out[url] = lines
    return out


@pytest.fixture(scope="module")
def crawl(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crawl]:
    redis_server.start()
    c = redis_server.client()
    c.flushall()
    c.close()
    tmp = tmp_path_factory.mktemp("taxonomy")
    token = os.urandom(4).hex()
    creds = [(f"user{i}-{token}", f"pw{i}-{os.urandom(6).hex()}") for i in range(1, 4)]
    secrets = []
    for user, pw in creds:
        secrets += [pw, f"{user}:{pw}", base64.b64encode(f"{user}:{pw}".encode()).decode()]

    site = HostileSite(banned={"p1"}, ban_hosts={"127.0.0.1"}, rate_k=1, retry_after=RETRY_AFTER,
                       flaky_k=1, slow_s=DOWNLOAD_TIMEOUT + 2.0).start()
    proxies = [ForwardProxy(f"p{i}", user, pw).start() for i, (user, pw) in enumerate(creds, 1)]
    mod_dir = tmp / "spiders"
    mod_dir.mkdir()
    (mod_dir / "hostile_spiders.py").write_text(textwrap.dedent(SPIDER_MODULE))
    env = fleet_env(
        redis_server.url, tmp, FLEET_SPIDER_MODULES="hostile_spiders",
        FLEET_PROXIES=",".join(p.url for p in proxies),
        FLEET_RETRY_BASE=str(RETRY_BASE), FLEET_RETRY_CAP=str(RETRY_CAP), FLEET_RETRY_MAX=str(RETRY_MAX),
        FLEET_ROTATE_MAX=str(ROTATE_MAX), FLEET_LEASE_SECONDS="5",
    )
    env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"

    phase1 = [site.url(f"/flaky503/{i}", "burst.test") for i in range(10)]
    phase1 += [site.url(f"/ok/{i}") for i in range(6)]
    ban_pages = [site.url(f"/ban-by-proxy/{i}") for i in range(BAN_ROUND)]
    phase1 += ban_pages
    phase1 += [site.url(p) for p in ("/missing/1", "/gone/1", "/auth/1", "/reset/1", "/slow/1")]
    phase1 += [site.url("/rate/1", "rate.test"), site.url("/captcha/1", "captcha.test")]
    phase1 += [site.url(PROXY_WORD_TIMEOUT, "timeouts.test")]
    phase2 = [site.url(f"/ban-by-proxy/{i}", "localhost") for i in range(100, 120)]

    cr = Crawl(site=site, proxies=proxies, env=env, tmp=tmp, redis_url=redis_server.url,
               seeded=phase1 + phase2, ban_pages=list(ban_pages), secrets=secrets, worker_logs=[], events=[])
    t0 = time.monotonic()
    procs = []
    try:
        (tmp / "phase1.txt").write_text("\n".join(phase1) + "\n")
        out = json.loads(cr.cli("seed", SPIDER, "--urls", str(tmp / "phase1.txt"), "--run", RUN))
        assert out["enqueued"] == len(phase1)
        procs = [start_worker(SPIDER, env, tmp / f"w{i}.log", "--until-idle", "2") for i in range(2)]
        # the localhost pages go in once p1 has been banned on 127.0.0.1 (so "still serves elsewhere"
        # is about choices made after the ban)
        _until_p1_banned(cr, procs, ban_pages)
        (tmp / "phase2.txt").write_text("\n".join(phase2) + "\n")
        out = json.loads(cr.cli("seed", SPIDER, "--urls", str(tmp / "phase2.txt"), "--run", RUN))
        assert out["enqueued"] == len(phase2)
        before = time.time()
        cr.mid_report = json.loads(cr.cli("proxies", "--json"))
        cr.mid_report_at = (before, time.time())  # the report's clock is somewhere in between
        cr.exit_codes = wait_all(procs, 50)
        cr.seconds = time.monotonic() - t0
        cr.worker_logs = [(tmp / f"w{i}.log").read_text() for i in range(2)]
        cr.events = [e for text in cr.worker_logs for e in _json_lines(text)]
        cr.dlq = json.loads(cr.cli("dlq", SPIDER, "list", "--json", "--limit", "1000"))
        before = time.time()
        cr.proxies_report = json.loads(cr.cli("proxies", "--json"))
        cr.proxies_report_at = (before, time.time())
        cr.items = _items(cr.data)
        cr.redis_dump = _dump_redis(redis_server.url)
        yield cr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        site.stop()
        for p in proxies:
            p.stop()


# ------------------------------------------------------------------------------------------------
# outcomes
# ------------------------------------------------------------------------------------------------


def test_workers_exit_clean_and_queues_drain(crawl: Crawl) -> None:
    assert crawl.exit_codes == [0, 0], "\n".join(t[-2000:] for t in crawl.worker_logs)
    status = json.loads(crawl.cli("status", SPIDER, "--json"))[SPIDER]
    assert (status["ready"], status["inflight"], status["delayed"]) == (0, 0, 0)
    assert crawl.seconds < 60, f"crawl took {crawl.seconds:.1f}s"


EXPECTED_DEAD = {
    "/missing/1": "http:404",
    "/gone/1": "http:410",
    "/auth/1": "http:401",
    "/reset/1": "exhausted:A",
    "/slow/1": "exhausted:A",
    "/captcha/1": "exhausted:B",
}


def test_every_url_is_exactly_one_object_or_one_dlq_entry(crawl: Crawl) -> None:
    dead = crawl.dlq_by_url()
    for url, entries in dead.items():
        assert len(entries) == 1, f"{url}: {len(entries)} DLQ entries"
    assert not set(dead) & set(crawl.items), "a URL is both an object and a DLQ entry"
    assert set(dead) | set(crawl.items) == set(crawl.seeded)
    assert len(dead) + len(crawl.items) == len(crawl.seeded)
    for url in crawl.seeded:
        path = "/" + url.split("/", 3)[3]
        if path == PROXY_WORD_TIMEOUT:
            assert url in dead  # its reason: test_timeout_class_does_not_depend_on_url_words
        elif path in EXPECTED_DEAD:
            assert url in dead, f"{url} should be dead-lettered"
            assert dead[url][0]["reason"] == EXPECTED_DEAD[path], (url, dead[url][0])
        else:
            assert url in crawl.items, f"{url} should be an object; DLQ says {dead.get(url)}"
            (item,) = crawl.items[url]
            assert item["token"] and item["title"] == "t"


def test_budgets_attempts_per_class(crawl: Crawl) -> None:
    dead = {("/" + u.split("/", 3)[3]): e[0] for u, e in crawl.dlq_by_url().items()}
    for path in ("/missing/1", "/gone/1", "/auth/1"):
        assert json.loads(dead[path]["attempts"]) == {"D": 1}, dead[path]
        assert len(crawl.site.hits_for(path)) == 1, "a hard failure is never retried"
    for path in ("/reset/1", "/slow/1"):
        assert json.loads(dead[path]["attempts"]) == {"A": RETRY_MAX + 1}, dead[path]
    assert json.loads(dead["/captcha/1"]["attempts"]) == {"B": ROTATE_MAX + 1}
    # the 429 spent one B attempt, not the A budget; the 503 spent one A attempt
    rate = crawl.items[crawl.site.url("/rate/1", "rate.test")][0]["_meta"]
    assert rate["attempts"] == {"B": 1}, rate
    for i in range(10):
        meta = crawl.items[crawl.site.url(f"/flaky503/{i}", "burst.test")][0]["_meta"]
        assert meta["attempts"] == {"A": 1}, meta


def test_timeout_class_does_not_depend_on_url_words(crawl: Crawl) -> None:
    url = crawl.site.url(PROXY_WORD_TIMEOUT, "timeouts.test")
    (entry,) = crawl.dlq_by_url()[url]
    assert (entry["reason"], json.loads(entry["attempts"])) == ("exhausted:A", {"A": RETRY_MAX + 1}), entry


def test_timeout_attempts_reach_the_site_once_each(crawl: Crawl) -> None:
    hits = crawl.site.hits_for("/slow/1")
    assert len(hits) == RETRY_MAX + 1, [(h.proxy, round(h.t, 2)) for h in hits]
    # a reset may be resent once per attempt by the HTTP client (see the xfail below), never more
    assert RETRY_MAX + 1 <= len(crawl.site.hits_for("/reset/1")) <= 2 * (RETRY_MAX + 1)


def test_reset_attempts_reach_the_site_once_each(crawl: Crawl) -> None:
    """Each A attempt is one delivery: the site sees RETRY_MAX+1 requests (a hidden in-process retry shows
    up here as extra hits: Twisted's retryAutomatically, switched off by scraper.worker.download)."""
    hits = crawl.site.hits_for("/reset/1")
    assert len(hits) == RETRY_MAX + 1, [(h.proxy, round(h.t, 3)) for h in hits]


# ------------------------------------------------------------------------------------------------
# rotation and proxy health
# ------------------------------------------------------------------------------------------------


def test_captcha_rotates_through_every_proxy(crawl: Crawl) -> None:
    hits = crawl.site.hits_for("/captcha/1")
    assert len(hits) == ROTATE_MAX + 1
    assert len({h.proxy for h in hits}) == ROTATE_MAX + 1, "each rotation must use a proxy not tried yet"
    (entry,) = crawl.dlq_by_url()[crawl.site.url("/captcha/1", "captcha.test")]
    assert entry["detail"].startswith("challenge:"), entry
    assert entry["status"] == "200"


def test_captcha_bans_every_proxy_it_met_and_dlq_names_them(crawl: Crawl) -> None:
    served = {h.proxy for h in crawl.site.hits_for("/captcha/1")}
    for row in crawl.proxies_report:
        name = crawl.name_of(row["id"])
        if name in served:
            # banned (its cooldown is U(0, 60 s), so it may already be healthy again by now)
            assert row["domains"].get("captcha.test", {}).get("bans", 0) >= 1, (name, row)
    (entry,) = crawl.dlq_by_url()[crawl.site.url("/captcha/1", "captcha.test")]
    assert {crawl.name_of(p) for p in json.loads(entry["proxies"])} == served


def test_banned_proxy_avoided_on_that_domain_only(crawl: Crawl) -> None:
    site, p1 = crawl.site, crawl.pid("p1")
    bans = sorted((e for e in crawl.events if e.get("event") == "proxy_banned"
                   and e.get("proxy") == p1 and e.get("domain") == "127.0.0.1"), key=_ts)
    assert bans, "p1 answered 403 on 127.0.0.1 but was never banned there"
    first_403 = min(h.wall for h in site.hits_for(proxy="p1", host="127.0.0.1") if h.status == 403)
    # a choice made before the ban reached every worker (view refresh 1 s) may still go out through p1
    settle = _ts(bans[0]) + 1.5
    for h in site.hits_for(proxy="p1", host="127.0.0.1"):
        if h.wall <= settle:
            continue
        in_force = [b for b in bans if _ts(b) <= h.wall - 1.5]
        cooling_until = in_force[-1]["cooling_until"] if in_force else 0.0
        assert h.wall >= cooling_until, (
            f"p1 used on 127.0.0.1 at {h.wall:.2f} ({h.path}) while cooling until {cooling_until:.2f}")
    # no /ban-by-proxy page on 127.0.0.1 ended up served by p1
    assert len(crawl.ban_pages) >= BAN_ROUND
    for url in crawl.ban_pages:
        meta = crawl.items[url][0]["_meta"]
        assert meta["proxy"] != p1 and meta["proxy"] in {crawl.pid(n) for n in ("p2", "p3")}
    # ...while p1 keeps serving localhost after its ban on 127.0.0.1
    later = [h for h in site.hits_for(proxy="p1", host="localhost") if h.wall > first_403]
    assert later and all(h.status == 200 for h in later), "p1 should still serve another domain"
    served_by = Counter(crawl.name_of(lines[0]["_meta"]["proxy"]) for url, lines in crawl.items.items()
                        if "//localhost:" in url)
    assert served_by["p1"] >= 1, served_by


def test_fleet_proxies_shows_cooling_per_domain(crawl: Crawl) -> None:
    for report, at in ((crawl.mid_report, crawl.mid_report_at), (crawl.proxies_report, crawl.proxies_report_at)):
        rows = {crawl.name_of(r["id"]): r for r in report}
        assert set(rows) == {"p1", "p2", "p3"}
        for name, row in rows.items():
            port = next(p.port for p in crawl.proxies if p.name == name)
            assert row["proxy"] == f"http://127.0.0.1:{port}", row
        banned = rows["p1"]["domains"]["127.0.0.1"]
        assert banned["bans"] >= 1, banned
        # a ban cools U(0, 60 s * 2**(n-1)) (full jitter): "cooling" is certain only before cooling_until
        until = banned["cooling_until"]
        assert until, banned
        # the report was computed between at[0] and at[1] (a CLI start-up on a loaded host takes seconds)
        if until > at[1] + 0.5:
            assert banned["state"] == "cooling", (at, banned)
        elif until < at[0] - 0.5:
            assert banned["state"] == "healthy", (at, banned)
        for name in ("p2", "p3"):
            dom = rows[name]["domains"].get("127.0.0.1", {})
            assert dom.get("state", "healthy") == "healthy" and dom.get("bans", 0) == 0, (name, dom)
    final = {crawl.name_of(r["id"]): r for r in crawl.proxies_report}
    local = final["p1"]["domains"]["localhost"]
    assert local["state"] == "healthy" and local["successes"] >= 1 and local["bans"] == 0, local


# ------------------------------------------------------------------------------------------------
# retry schedule (recorded, not slept)
# ------------------------------------------------------------------------------------------------


def test_a_retries_jittered_capped_and_scheduled(crawl: Crawl) -> None:
    a_events = [e for e in crawl.events if e.get("event") == "request_delayed" and e.get("cls") == "A"]
    assert len(a_events) >= 2 * RETRY_MAX + 10, len(a_events)
    delays = [e["delay_s"] for e in a_events]
    assert all(0 <= d <= RETRY_CAP + 0.01 for d in delays), delays
    assert len(set(delays)) > len(delays) // 2, f"not jittered: {delays}"
    for e in a_events:
        assert abs(e["due"] - e["delay_s"] - _ts(e)) < 1.0, e  # due = when it was decided + delay
    for path in ("/reset/1", "/slow/1"):
        url = crawl.site.url(path)
        evs = sorted(crawl.delayed(url), key=lambda e: e["attempts"]["A"])
        assert [e["attempts"]["A"] for e in evs] == list(range(1, RETRY_MAX + 1)), evs
        for e in evs:  # full jitter: U(0, min(cap, base * 2**n))
            n = e["attempts"]["A"] - 1
            assert e["delay_s"] <= min(RETRY_CAP, RETRY_BASE * 2 ** n) + 0.001, e
        # the site saw each retry no earlier than it was due
        hits = sorted(h.wall for h in crawl.site.hits_for(path))
        for e in evs:
            later = [t for t in hits if t > _ts(e)]
            assert later and later[0] >= e["due"] - 0.05, (path, e, later[:1])


def test_retry_after_is_honoured(crawl: Crawl) -> None:
    url = crawl.site.url("/rate/1", "rate.test")
    (ev,) = crawl.delayed(url)
    assert ev["reason"] == "http:429" and ev["delay_s"] >= RETRY_AFTER, ev
    hits = sorted(h.t for h in crawl.site.hits_for("/rate/1"))
    assert len(hits) == 2 and hits[1] - hits[0] >= RETRY_AFTER - 0.05, hits


def test_503_burst_advances_domain_hold_once(crawl: Crawl) -> None:
    c = redis.Redis.from_url(crawl.redis_url)
    try:
        step = c.hget(PREFIX + "hold", "burst.test#step")
    finally:
        c.close()
    assert step is not None, "a 503 burst must set a domain hold"
    assert 1 <= int(step) <= 2, f"ten 503s advanced the hold {int(step)} steps"
    evs = [e for i in range(10) for e in crawl.delayed(crawl.site.url(f"/flaky503/{i}", "burst.test"))]
    assert len(evs) == 10 and all(e["cls"] == "A" and e["reason"] == "http:503" for e in evs)


# ------------------------------------------------------------------------------------------------
# DLQ evidence
# ------------------------------------------------------------------------------------------------


def test_dlq_entries_carry_evidence(crawl: Crawl) -> None:
    common = ("url", "class", "reason", "attempts", "worker", "at", "evidence_key", "fp", "run")
    with_response = ("status", "headers", "body_sha256", "body_size")
    for e in crawl.dlq:
        for f in common:
            assert e.get(f), (f, e)
        assert e["class"] == "D"
        assert isinstance(json.loads(e["attempts"]), dict)
        assert e["evidence_key"].startswith(f"evidence/spider={SPIDER}/run={RUN}/")
        evidence = json.loads((crawl.data / e["evidence_key"]).read_text())
        assert evidence["url"] == e["url"] and evidence["reason"] == e["reason"]
        if e["detail"].startswith(("http:", "challenge:")):  # resets and timeouts have no response to keep
            for f in with_response:
                assert e.get(f), (f, e)
            assert len(e["body_sha256"]) == 64 and int(e["body_size"]) > 0
            json.loads(e["headers"])
    by = {("/" + u.split("/", 3)[3]): v[0] for u, v in crawl.dlq_by_url().items()}
    assert (by["/missing/1"]["status"], by["/gone/1"]["status"], by["/auth/1"]["status"]) == ("404", "410", "401")
    assert "text/html" in json.loads(by["/missing/1"]["headers"]).get("content-type", "")


# ------------------------------------------------------------------------------------------------
# secrets
# ------------------------------------------------------------------------------------------------


def _leaks(secrets: list[str], blobs: dict[str, bytes]) -> list[str]:
    found = []
    for where, blob in blobs.items():
        for s in secrets:
            if s.encode() in blob:
                found.append(f"{s!r} in {where}")
    return found


def test_no_credentials_in_logs_cli_or_objects(crawl: Crawl) -> None:
    blobs: dict[str, bytes] = {f"worker log {i}": t.encode() for i, t in enumerate(crawl.worker_logs)}
    blobs.update({f"cli output {i}": t.encode() for i, t in enumerate(crawl.cli_output)})
    blobs["fleet proxies --json"] = json.dumps(crawl.proxies_report).encode()
    blobs["fleet dlq list --json"] = json.dumps(crawl.dlq).encode()
    files = [p for p in crawl.data.rglob("*") if p.is_file()]
    assert any("/raw/" in str(p) for p in files) and any("/evidence/" in str(p) for p in files)
    for p in files:
        raw = p.read_bytes()
        blobs[str(p.relative_to(crawl.data))] = gzip.decompress(raw) if p.suffix == ".gz" else raw
    assert not _leaks(crawl.secrets, blobs)


def test_no_credentials_in_redis(crawl: Crawl) -> None:
    blob = b"\n".join(crawl.redis_dump)
    assert b"fleet:proxies:" in blob and PREFIX.encode() + b"dlq" in blob  # the dump saw the keys
    assert not _leaks(crawl.secrets, {"redis": blob})
    # the DLQ's stored envelopes (not shown by `dlq list`) carry proxy ids at most
    c = redis.Redis.from_url(crawl.redis_url)
    try:
        for _id, fields in c.xrange(PREFIX + "dlq"):
            env = json.loads(fields[b"envelope"])
            assert "proxy" not in env.get("meta", {}) and "_auth_proxy" not in env.get("meta", {})
            for h in env.get("history", []):
                assert h.get("proxy") in (None, *[proxy_id(p.url) for p in crawl.proxies]), h
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# operator action: requeue (mutates the run: keep it last)
# ------------------------------------------------------------------------------------------------


def test_dlq_requeue_by_reason(crawl: Crawl) -> None:
    before = json.loads(crawl.cli("status", SPIDER, "--json"))[SPIDER]
    out = json.loads(crawl.cli("dlq", SPIDER, "requeue", "--reason", "http:404"))
    assert out == {"requeued": 1, "skipped": 0, "cancelled_kept": 0}
    after = json.loads(crawl.cli("status", SPIDER, "--json"))[SPIDER]
    assert after["dlq"] == before["dlq"] - 1
    assert after["ready"] == before["ready"] + 1
    left = json.loads(crawl.cli("dlq", SPIDER, "list", "--json"))
    assert "http:404" not in {e["reason"] for e in left}
    c = redis.Redis.from_url(crawl.redis_url)
    try:
        (lid,) = c.zrange(PREFIX + "ready", 0, -1)
        env = json.loads(c.hget(PREFIX + "env", lid))
    finally:
        c.close()
    assert env["url"] == crawl.site.url("/missing/1")
    assert env.get("attempts", {}) == {}, env["attempts"]  # an empty field is left out of the JSON
    assert any(h.get("requeued_from") == "http:404" for h in env["history"])


# ------------------------------------------------------------------------------------------------
# proxy health bookkeeping against the real Redis (runs after the crawl tests; own keys, no flush)
# ------------------------------------------------------------------------------------------------


class _SeqRng:
    """A random.Random stand-in that returns the given draws in order."""

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def _pool_run(redis_url: str, fn: Any) -> Any:
    import asyncio

    import redis.asyncio as aioredis

    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_second_ban_never_shortens_the_cooldown(redis_server: Any) -> None:
    from scraper.worker.proxies import Proxy, ProxyPool, health_key

    url = f"http://u:pw-{os.urandom(4).hex()}@127.0.0.1:9"
    proxy, domain = Proxy(url, proxy_id(url)), f"ban-{os.urandom(3).hex()}.test"

    async def two_workers_ban(client: Any) -> tuple[float, float, float]:
        w1 = ProxyPool([proxy], client, rng=_SeqRng([0.5, 0.9]))  # type: ignore[arg-type]
        w2 = ProxyPool([proxy], client, rng=_SeqRng([0.5, 0.01]))  # type: ignore[arg-type]
        first = await w1.ban(proxy.id, domain)
        second = await w2.ban(proxy.id, domain)
        stored = float(await client.hget(health_key(proxy.id, domain), "cooling_until"))
        await client.delete(health_key(proxy.id, domain))
        return first, second, stored

    first, _second, stored = _pool_run(redis_server.url, two_workers_ban)
    assert stored >= first, f"cooldown shortened by {first - stored:.1f}s"


def test_a_success_batched_before_a_ban_does_not_reset_its_escalation(redis_server: Any) -> None:
    from scraper.worker.proxies import Proxy, ProxyPool, health_key

    url = f"http://u:pw-{os.urandom(4).hex()}@127.0.0.1:9"
    proxy, domain = Proxy(url, proxy_id(url)), f"esc-{os.urandom(3).hex()}.test"

    async def success_then_ban_then_flush(client: Any) -> dict[bytes, bytes]:
        pool = ProxyPool([proxy], client)
        pool.success(proxy.id, domain, 12.0)  # a 200 answered before the ban ...
        await pool.ban(proxy.id, domain)  # ... a 403 right after it
        await pool.flush()  # the keeper's periodic flush
        raw = await client.hgetall(health_key(proxy.id, domain))
        await client.delete(health_key(proxy.id, domain))
        return dict(raw)

    raw = _pool_run(redis_server.url, success_then_ban_then_flush)
    assert int(raw[b"consecutive"]) == 1, raw


# ------------------------------------------------------------------------------------------------
# a dead proxy (connection refused) is the proxy's fault, not the URL's
# ------------------------------------------------------------------------------------------------


@dataclass
class DeadCrawl:
    dead_id: str
    live_id: str
    events: list[dict[str, Any]]
    report: list[dict[str, Any]]
    items: int
    dlq: list[dict[str, Any]]
    exit_codes: list[int]


@pytest.fixture(scope="module")
def dead_proxy_crawl(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeadCrawl]:
    import socket

    spider, run = f"{SPIDER}_dead", "dead1"
    tmp = tmp_path_factory.mktemp("deadproxy")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead_url = f"http://deaduser:deadpw-{os.urandom(4).hex()}@127.0.0.1:{dead_port}"
    mod_dir = tmp / "spiders"
    mod_dir.mkdir()
    (mod_dir / "hostile_spiders.py").write_text(textwrap.dedent(SPIDER_MODULE))
    with HostileSite() as site, ForwardProxy("live", "liveuser", f"livepw-{os.urandom(4).hex()}") as live:
        env = fleet_env(
            redis_server.url, tmp, FLEET_SPIDER_MODULES="hostile_spiders",
            FLEET_PROXIES=f"{dead_url},{live.url}", FLEET_RETRY_BASE=str(RETRY_BASE),
            FLEET_RETRY_CAP=str(RETRY_CAP), FLEET_RETRY_MAX=str(RETRY_MAX), FLEET_ROTATE_MAX=str(ROTATE_MAX),
            FLEET_LEASE_SECONDS="5",
        )
        env["PYTHONPATH"] = f"{mod_dir}{os.pathsep}{env['PYTHONPATH']}"
        urls = [site.url(f"/ok/{i}", "dead.test") for i in range(8)]
        args = [a for u in urls for a in ("--url", u)]
        res = fleet("seed", spider, *args, "--run", run, env=env, timeout=60)
        assert res.returncode == 0, res.stderr[-2000:]
        w = start_worker(spider, env, tmp / "w.log", "--until-idle", "1")
        try:
            codes = wait_all([w], 25)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        report = json.loads(fleet("proxies", "--json", env=env, timeout=60).stdout)
        dlq = json.loads(fleet("dlq", spider, "list", "--json", env=env, timeout=60).stdout)
        items = len(list((tmp / "data" / "items").rglob("*.jsonl")))
        yield DeadCrawl(proxy_id(dead_url), proxy_id(live.url), _json_lines((tmp / "w.log").read_text()),
                        report, items, dlq, codes)


def test_dead_proxy_does_not_lose_urls(dead_proxy_crawl: DeadCrawl) -> None:
    assert dead_proxy_crawl.exit_codes == [0]
    assert dead_proxy_crawl.items == 8 and dead_proxy_crawl.dlq == []


def test_dead_proxy_is_class_b_and_banned(dead_proxy_crawl: DeadCrawl) -> None:
    classified = [e for e in dead_proxy_crawl.events if e.get("event") == "request_classified"]
    assert classified, "the dead proxy should have been tried at least once"
    assert all(e["cls"] == "B" for e in classified), sorted({(e["cls"], e["reason"]) for e in classified})
    row = next(r for r in dead_proxy_crawl.report if r["id"] == dead_proxy_crawl.dead_id)
    assert row["domains"].get("dead.test", {}).get("bans", 0) >= 1, row

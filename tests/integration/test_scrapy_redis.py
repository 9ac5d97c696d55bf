"""scrapy-redis spiders on ``fleet worker`` unchanged (issue #19, item 3).

Real redis-server, real ``fleet worker`` subprocesses, the loopback demo site. The spiders are in
tests/integration/sredis_spiders.py, written as scrapy-redis users write them; they are fed the way
scrapy-redis users feed them (LPUSH of URLs and JSON data, SADD into a set key) while workers run.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import redis

from scraper.devtools.demo_site import DemoSite
from scraper.queue import redisio
from scraper.queue.startkeys import StartStage
from tests.fleetproc import counts, fleet, fleet_env, fleet_json, objects, start_worker, wait_all, wait_for
from tests.parity.site import DOC_PAGES, ParitySite

MODULES = "tests.integration.sredis_spiders"


def _items(data: Path, spider: str, run: str) -> list[dict[str, Any]]:
    return [item for lines in objects(data, "items", spider, run).values() for item in lines]


class _Boom:
    """Unpickling this creates ``path``: proof that an entry was never unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (str(self.path), "w"))


def test_stage_adopts_the_list_of_a_worker_that_died_mid_move(redis_url: str) -> None:
    """STAGE_STARTS: an entry moved by a worker that then died is handed, under the run it was moved for,
    to the next worker once the dead one's registration expires; READY at the low-water mark moves nothing."""

    async def main() -> None:
        client = redisio.client(redis_url)
        try:
            await client.rpush("sp:start_urls", *[f"https://e.example/{i}" for i in range(5)])
            dead = StartStage(client, "sp", "dead", "sp:start_urls", "list")
            got = await dead.stage("r1", 3, low=10, registration=-1.0)  # dies at once: registration expired
            assert got.run == "r1" and got.entries == [b"https://e.example/0", b"https://e.example/1",
                                                       b"https://e.example/2"]
            alive = StartStage(client, "sp", "alive", "sp:start_urls", "list")
            adopted = await alive.stage("r2", 3, low=10, registration=60.0)
            assert adopted.run == "r1" and adopted.entries == got.entries  # same entries, same run
            assert not await client.exists(dead.staging)
            again = await alive.stage("r2", 3, low=10, registration=60.0)  # not done yet: the same batch
            assert again == adopted
            await alive.done()
            fresh = await alive.stage("r2", 3, low=10, registration=60.0)
            assert fresh.run == "r2" and fresh.entries == [b"https://e.example/3", b"https://e.example/4"]
            await alive.done()
            await client.zadd(alive.keys.ready, {f"id{i}": i for i in range(2)})
            await client.rpush("sp:start_urls", "https://e.example/5")
            assert (await alive.stage("r2", 3, low=2, registration=60.0)).entries == []  # READY is full enough
            assert await client.llen("sp:start_urls") == 1
            await client.sadd("sp:set", "https://e.example/s")
            s = StartStage(client, "sp", "alive", "sp:set", "set")
            assert (await s.stage("r2", 3, low=10, registration=60.0)).entries == [b"https://e.example/s"]
            await s.done()
            await s.leave()
            assert await client.hkeys(alive.keys.stage) == []
        finally:
            await client.aclose()

    asyncio.run(main())


def test_redis_spider_fed_by_lpush_while_a_worker_is_killed(redis_url: str, tmp_path: Path) -> None:
    """Acceptance: a RedisSpider fed by LPUSH (URLs and JSON data) while two workers run, one SIGKILLed
    mid-crawl: every product exactly once, JSON meta kept, a pickled entry dead-lettered unread."""
    spider = "sredis_products"
    marker = tmp_path / "unpickled"
    with DemoSite(n_products=80, latency=0.05).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES=MODULES, FLEET_LEASE_SECONDS="2",
                        FLEET_REDIS_RUN="r1", FLEET_LOG_FORMAT="json")
        urls = site.product_urls()
        r = redis.Redis.from_url(redis_url)
        key = f"{spider}:start_urls"

        def entry(i: int) -> str:
            return json.dumps({"url": urls[i], "meta": {"src": "json"}}) if i % 2 else urls[i]

        r.lpush(key, *[entry(i) for i in range(10)])
        w1 = start_worker(spider, env, tmp_path / "w1.log", "--concurrency", "4", "--until-idle", "4")
        w2 = start_worker(spider, env, tmp_path / "w2.log", "--concurrency", "4", "--until-idle", "4")
        r.lpush(key, pickle.dumps(_Boom(marker)))
        for start in range(10, 80, 10):  # the cron job keeps pushing while the workers run
            time.sleep(0.2)
            r.lpush(key, *[entry(i) for i in range(start, start + 10)])
        assert wait_for(lambda: len(_items(tmp_path / "data", spider, "r1")) >= 20, 60)
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        assert wait_all([w2], 90) == [0], (tmp_path / "w2.log").read_text()[-3000:]

        items = _items(tmp_path / "data", spider, "r1")
        skus = sorted(i["sku"] for i in items)
        assert skus == sorted(f"SKU-{n:05d}" for n in range(1, 81))  # every product, exactly once
        for it in items:
            n = int(it["sku"].split("-")[1]) - 1
            assert it["src"] == ("json" if n % 2 else "url")
        assert not marker.exists()  # never unpickled
        assert r.llen(key) == 0
        assert r.keys(f"fleet:{{{spider}}}:stage:*") == []  # no staging list left behind
        c = counts(redis_url, spider)
        assert c["dlq"] == 1 and c["ready"] == c["inflight"] == c["delayed"] == 0
        (_, fields), = r.xrange(f"fleet:{{{spider}}}:dlq")
        assert fields[b"reason"] == b"start_entry:pickle" and fields[b"source"] == key.encode()
        status = fleet_json("status", spider, "--json", env=env)
        assert status[spider]["runs"]["r1"] == {"seen": 80, "done": 80}
        log = (tmp_path / "w2.log").read_text()
        assert "scrapy_redis_settings_replaced" in log and "start_entries_seeded" in log
        # the refused entry is the run's DLQ entry but never was a request of it: the run still reconciles
        (m,) = fleet_json("runs", spider, "--refresh", "--json", env=env)
        assert m["reconciliation"]["ok"] and m["reconciliation"]["dlq_unseen"] == 1, m["reconciliation"]
        assert m["complete"] is True and m["counts"]["dlq"] == 1, m
        r.close()


def test_redis_crawl_spider_fed_by_a_set_key(redis_url: str, tmp_path: Path) -> None:
    """A RedisCrawlSpider whose redis_key is a set (REDIS_START_URLS_AS_SET): its rules follow the
    product links of the catalogue pages SADDed into ``sredis_crawl:seeds``."""
    spider = "sredis_crawl"
    with DemoSite(n_products=30, per_page=10).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES=MODULES, FLEET_REDIS_RUN="s1",
                        FLEET_LOG_FORMAT="json")
        r = redis.Redis.from_url(redis_url)
        # `fleet seed` without URLs says where such a spider is fed from, in one line (exit 1)
        res = fleet("seed", spider, env=env)
        assert res.returncode == 1 and "sredis_crawl:seeds" in res.stderr and "Traceback" not in res.stderr
        w = start_worker(spider, env, tmp_path / "w.log", "--concurrency", "4", "--until-idle", "3")
        r.sadd(f"{spider}:seeds", *site.list_urls())
        assert wait_all([w], 90) == [0], (tmp_path / "w.log").read_text()[-3000:]
        skus = sorted(i["sku"] for i in _items(tmp_path / "data", spider, "s1"))
        assert skus == sorted(f"SKU-{n:05d}" for n in range(1, 31))
        assert r.scard(f"{spider}:seeds") == 0
        assert counts(redis_url, spider)["dlq"] == 0
        r.close()


def test_redis_crawl_spider_parses_its_start_url_by_rule_when_linked_back(redis_url: str, tmp_path: Path) -> None:
    """Issue #19 for scrapy-redis users: an entry pushed to the start key is a start request (dont_filter,
    as scrapy-redis makes it), so the pages' links back to it are still fetched and parsed by the rule's
    callback, as under plain scrapy-redis. Pushing the same entry again in the run is skipped (SEEN)."""
    spider = "sredis_docs"
    site = ParitySite().start()
    try:
        env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES=MODULES, FLEET_REDIS_RUN="d1",
                        FLEET_LOG_FORMAT="json")
        r = redis.Redis.from_url(redis_url)
        key = f"{spider}:start_urls"
        start = f"{site.base}/docs/"
        w = start_worker(spider, env, tmp_path / "w.log", "--concurrency", "4", "--until-idle", "3")
        r.lpush(key, start)
        want = sorted([("start", start), ("page", start),
                       *[("page", f"{site.base}/docs/p{n}") for n in range(1, DOC_PAGES + 1)]])

        def got() -> list[tuple[str, str]]:
            return sorted((i["kind"], i["url"]) for i in _items(tmp_path / "data", spider, "d1"))

        assert wait_for(lambda: len(got()) >= len(want), 60), (tmp_path / "w.log").read_text()[-3000:]
        r.lpush(key, start)  # the cron job pushes it again in the same run: nothing is fetched again
        assert wait_all([w], 90) == [0], (tmp_path / "w.log").read_text()[-3000:]
        assert got() == want  # ("page", /docs/): parsed by the rule's callback too, as under scrapy-redis
        seeded = [json.loads(x) for x in (tmp_path / "w.log").read_text().splitlines()
                  if '"start_entries_seeded"' in x]
        assert [(e["enqueued"], e["skipped"]) for e in seeded] == [(1, 0), (0, 1)]
        assert r.llen(key) == 0
        r.close()
    finally:
        site.stop()


def test_a_start_key_of_the_wrong_type_fails_an_until_idle_worker(redis_url: str, tmp_path: Path) -> None:
    """A probe: URLs SADDed to a spider that reads a list: the feeder warned once (WRONGTYPE) and the
    `--until-idle` worker exited 0 with the URL never fetched, which cron reads as a finished crawl. It now
    exits 1 with one line saying which key and which setting."""
    spider = "sredis_products"
    env = fleet_env(redis_url, tmp_path, FLEET_SPIDER_MODULES=MODULES, FLEET_REDIS_RUN="r1")
    r = redis.Redis.from_url(redis_url)
    r.sadd(f"{spider}:start_urls", "http://127.0.0.1:9/p")
    r.close()
    log = tmp_path / "w.log"
    assert wait_all([start_worker(spider, env, log, "--until-idle", "2")], 60) == [1]
    text = log.read_text()
    assert "start_feed_misconfigured" in text and "REDIS_START_URLS_AS_SET" in text, text[-2000:]

"""scrapy-redis spiders as Fleet sees them (scraper.worker.redisspider), without Redis: which spiders,
which settings are replaced, which start-key entries are refused unread, and FLEET_REDIS_RUN."""

from __future__ import annotations

import json
import pickle

import pytest
from scrapy import Spider
from scrapy.settings import Settings

from scraper.infra.config import ConfigError, FleetConfig
from scraper.worker.catalog import base_settings, worker_settings
from scraper.worker.redisspider import (
    MAX_ENTRY_BYTES,
    StartSource,
    entry_problem,
    is_redis_spider,
    redis_url_setting,
    replaced_settings,
)
from tests.integration.sredis_spiders import ProductsCrawl, ProductsFromRedis


def test_recognises_scrapy_redis_spiders_only() -> None:
    assert is_redis_spider(ProductsFromRedis) and is_redis_spider(ProductsCrawl)
    assert not is_redis_spider(Spider)


def test_replaced_settings_are_the_scrapy_redis_ones() -> None:
    assert replaced_settings(ProductsFromRedis) == ["SCHEDULER", "DUPEFILTER_CLASS", "SCHEDULER_PERSIST"]

    class Other(ProductsFromRedis):
        custom_settings = {"SCHEDULER": "my.Scheduler", "REDIS_URL": "redis://h:1/2"}

    assert replaced_settings(Other) == []

    class Stats(ProductsFromRedis):
        custom_settings = {"STATS_CLASS": "scrapy_redis.stats.RedisStatsCollector", "JOBDIR": "crawls/x"}

    assert replaced_settings(Stats) == ["STATS_CLASS", "JOBDIR"]
    ws = worker_settings(Stats, base_settings(FleetConfig.from_env()))
    Stats.update_settings(ws)  # what Scrapy's Crawler does with custom_settings: Fleet's values still win
    assert ws.get("STATS_CLASS") == "scrapy.statscollectors.MemoryStatsCollector" and ws.get("JOBDIR") is None
    assert redis_url_setting(Other) == "redis://h:1/2"
    assert redis_url_setting(ProductsFromRedis) is None


def test_start_source_follows_scrapy_redis() -> None:
    spider = ProductsCrawl()
    settings = Settings({"REDIS_START_URLS_AS_SET": True, "CONCURRENT_REQUESTS": 7})
    assert StartSource.of(spider, settings) == StartSource("sredis_crawl:seeds", "set", 7, "utf-8")
    plain = ProductsFromRedis()
    src = StartSource.of(plain, Settings({"REDIS_START_URLS_BATCH_SIZE": 3, "REDIS_ENCODING": "latin-1"}))
    assert src == StartSource("sredis_products:start_urls", "list", 3, "latin-1")
    assert StartSource.of(plain, Settings({"REDIS_START_URLS_KEY": "q:%(name)s"})).key == "q:sredis_products"


@pytest.mark.parametrize("data", [
    b"https://shop.example/p/1", b"  https://shop.example/p/1\n", b"sku-123",
    json.dumps({"url": "https://shop.example/", "meta": {"a": 1}}).encode(), b"[1, 2]",
])
def test_urls_and_json_are_accepted(data: bytes) -> None:
    assert entry_problem(data) is None


@pytest.mark.parametrize(("data", "reason"), [
    (pickle.dumps({"url": "https://shop.example/"}), "pickle"),
    (pickle.dumps({"url": "https://shop.example/"}, protocol=0), "not_url_or_json"),
    (pickle.dumps(["https://shop.example/"], protocol=1), "not_url_or_json"),
    (b"\xff\xfe\x00", "undecodable"),
    (b"   ", "empty"),
    (b'{"url": NaN}', "bad_json"),
    (b"{" * 10, "bad_json"),
    (b"a" * (MAX_ENTRY_BYTES + 1), "too_large"),
    (b"https://a.example/ x", "not_url_or_json"),
])
def test_other_entries_are_refused_unread(data: bytes, reason: str) -> None:
    assert entry_problem(data) == reason


def test_fleet_redis_run() -> None:
    assert FleetConfig.from_env({}).redis_run == "redis-%Y%m%d"
    assert FleetConfig.from_env({}).redis_run_now().startswith("redis-20")
    assert FleetConfig.from_env({"FLEET_REDIS_RUN": "nightly"}).redis_run_now() == "nightly"
    with pytest.raises(ConfigError, match="FLEET_REDIS_RUN"):
        FleetConfig.from_env({"FLEET_REDIS_RUN": "a b/%Y"})

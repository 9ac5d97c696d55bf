"""Scrapy's ways for a spider to stop its crawl, through ``fleet run`` (found by a user-contract probe).

A callback that raises ``CloseSpider`` went to the DLQ as ``callback_error:CloseSpider`` (exit 4), its items lost;
``CLOSESPIDER_ITEMCOUNT`` stopped the worker with work left and nothing in the summary said why. Now the page that
raised keeps what it yielded before (as in Scrapy), the worker stops gracefully, the rest stays queued for
``--resume``, and the summary's ``finish_reasons`` and the exit message name the spider's reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import loopback
from tests.fleetproc import counts, fleet, fleet_json, objects, spider_module_env

pytestmark = pytest.mark.integration

SPIDERS = '''
import os

import scrapy
from scrapy.exceptions import CloseSpider


class Enough(scrapy.Spider):
    name = "enough"

    async def start(self):
        yield scrapy.Request(os.environ["CLOSE_SITE"] + "/p/0")

    def parse(self, response):
        n = int(response.url.rsplit("/", 1)[1])
        yield {"n": n}
        if n == 3:
            raise CloseSpider("enough")
        for i in range(1, 4):
            yield response.follow(f"/p/{n + i}")


class Bandwidth(Enough):
    name = "bandwidth"  # Scrapy's own example: the page says the quota is spent, so nothing on it is data

    def parse(self, response):
        n = int(response.url.rsplit("/", 1)[1])
        if n == 2:
            raise CloseSpider("bandwidth_exceeded")
        yield {"n": n}
        for i in range(1, 4):
            yield response.follow(f"/p/{n + i}")


class Counted(Enough):
    name = "counted"
    custom_settings = {"CLOSESPIDER_ITEMCOUNT": 3}

    def parse(self, response):
        n = int(response.url.rsplit("/", 1)[1])
        yield {"n": n}
        if n < 30:
            for i in range(1, 4):
                yield response.follow(f"/p/{n + i}")
'''



@pytest.mark.parametrize(("spider", "reason"), [("enough", "enough"), ("bandwidth", "bandwidth_exceeded"),
                                               ("counted", "closespider_itemcount")])
def test_a_spider_that_closes_itself_ends_the_run_incomplete_and_resumable(
        redis_url: str, tmp_path: Path, spider: str, reason: str) -> None:
    with loopback.serving(loopback.OkPages) as base:
        env = spider_module_env(redis_url, tmp_path, "close_spiders", SPIDERS, CLOSE_SITE=base)
        res = fleet("run", spider, "--run", "r1", env=env, timeout=120)
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert res.returncode == 5 and summary["finish_reasons"] == {reason: 1}, (summary, res.stderr[-2000:])
        assert summary["dlq"] == 0 and summary["pending"] > 0, summary
        assert f"the spider closed itself ({reason})" in res.stderr
        done = {line["n"] for lines in objects(tmp_path / "data", "items", spider, "r1").values() for line in lines}
        if spider == "enough":
            assert 3 in done, done  # the page that raised kept the item it yielded first
        if spider == "bandwidth":
            assert 2 not in done, done  # it yielded nothing: not done, back in the queue for --resume
        assert fleet_json("dlq", spider, "list", "--json", env=env) == []
        c = counts(redis_url, spider)
        assert c["inflight"] == 0 and c["ready"] + c["delayed"] == summary["pending"], c  # nothing lost

"""A spider's own item pipelines in a real worker: they run before Fleet's ObjectPipeline, and what they
leave (modified, replaced, dropped, raised on) is exactly what the request's object holds and how the
request settles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scraper.devtools.demo_site import DemoSite
from tests.fleetproc import fleet, objects, spider_module_env

pytestmark = pytest.mark.integration

PIPE_SPIDERS = '''
import dataclasses

import scrapy
from scrapy.exceptions import DropItem


@dataclasses.dataclass
class Row:
    n: int
    title: str
    sku: str


class Upper:
    def process_item(self, item):
        item.title = item.title.upper()  # in place
        return item


class AsDict:
    def process_item(self, item):
        return {**dataclasses.asdict(item), "seen": "asdict"}  # another object


class DropOdd:
    def process_item(self, item):
        if item.n % 2:
            raise DropItem(f"odd {item.n}")
        return item


class Boom:
    def process_item(self, item):
        if item.sku.endswith("00003"):
            raise ValueError("boom")
        return item


class Base(scrapy.Spider):
    def parse(self, response):
        for n in range(3):
            yield Row(n, response.css("h1::text").get(), response.css(".sku::text").get())


class Modify(Base):
    name = "pipe_modify"
    custom_settings = {"ITEM_PIPELINES": {Upper: 300, "pipe_spiders.AsDict": 400}}


class Drop(Base):
    name = "pipe_drop"
    custom_settings = {"ITEM_PIPELINES": {"pipe_spiders.DropOdd": 300}}


class Raise(Base):
    name = "pipe_raise"
    custom_settings = {"ITEM_PIPELINES": {"pipe_spiders.Boom": 300}}


class Off(Base):
    name = "pipe_off"
    custom_settings = {"ITEM_PIPELINES": {"pipelines.objects.ObjectPipeline": None}}
'''


@pytest.fixture
def pipe_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return spider_module_env(redis_url, tmp_path, "pipe_spiders", PIPE_SPIDERS)


def _run(spider: str, env: dict[str, str], tmp_path: Path, site: DemoSite, code: int) -> dict:
    urls = tmp_path / f"{spider}.txt"
    urls.write_text("".join(f"{u}\n" for u in site.product_urls()))
    res = fleet("run", spider, "--urls", str(urls), "--run", "r1", "--idle", "1", env=env, timeout=120)
    assert res.returncode == code, res.stderr[-3000:]
    summary: dict = json.loads(res.stdout)
    assert summary["worker_exit_codes"] == [0] and summary["pending"] == 0
    return summary


def test_own_pipelines_modify_replace_drop_and_raise(pipe_env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DemoSite(n_products=4).start() as site:
        # modified in place at 300, replaced by a dict at 400: the object holds what they left
        summary = _run("pipe_modify", pipe_env, tmp_path, site, 0)
        assert summary["done"] == 4 and summary["dlq"] == 0
        items = objects(data, "items", "pipe_modify", "r1")
        assert len(items) == 4
        for lines in items.values():
            assert [x["n"] for x in lines] == [0, 1, 2]
            assert all(x["seen"] == "asdict" and x["title"] == x["title"].upper() != "" for x in lines)

        # DropItem drops exactly that item; every request still settles (acked, nothing retried)
        summary = _run("pipe_drop", pipe_env, tmp_path, site, 0)
        assert summary["done"] == 4 and summary["dlq"] == 0
        items = objects(data, "items", "pipe_drop", "r1")
        assert len(items) == 4 and all([x["n"] for x in lines] == [0, 2] for lines in items.values())

        # a pipeline that raises: that request is class D pipeline_error, the others are written
        summary = _run("pipe_raise", pipe_env, tmp_path, site, 4)
        assert summary["dlq"] == 1
        assert len(objects(data, "items", "pipe_raise", "r1")) == 3
        res = fleet("dlq", "pipe_raise", "--json", env=pipe_env)
        (entry,) = json.loads(res.stdout)
        assert entry["reason"] == "pipeline_error" and entry["url"].endswith("/3.html"), entry


def test_switching_the_object_pipeline_off_is_a_configuration_error(
        pipe_env: dict[str, str], tmp_path: Path, redis_url: str) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/product/1.html\n")
    for args in (("worker", "pipe_off", "--until-idle", "0"), ("run", "pipe_off", "--urls", str(urls))):
        res = fleet(*args, env=pipe_env, timeout=60)
        assert res.returncode == 1, res.stderr[-2000:]
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        assert lines[-1].startswith("error: spider 'pipe_off': ITEM_PIPELINES sets pipelines.objects.ObjectPipeline "
                                    "to None"), res.stderr[-2000:]
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert not client.keys("fleet:{pipe_off}:*")  # fleet run refused before seeding anything
    finally:
        client.close()

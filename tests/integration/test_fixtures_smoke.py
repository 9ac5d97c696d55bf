"""Each shared fixture works against a real loopback server (the base every other test trusts)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import pytest
import redis
import scrapy
from scrapy.http import HtmlResponse

from scraper.spiders.demo_shop import DemoShopSpider

pytestmark = pytest.mark.integration


def _fetch(url: str) -> tuple[int, str, str]:
    """GET ``url`` -> (status, final url, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.geturl(), resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, url, err.read().decode("utf-8")


def _html_response(url: str) -> HtmlResponse:
    status, final_url, body = _fetch(url)
    assert status == 200, (status, url)
    return HtmlResponse(url=final_url, body=body.encode("utf-8"), encoding="utf-8", status=status)


# -- Redis ----------------------------------------------------------------------------------


def test_redis_ping_and_config(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        assert client.dbsize() == 0
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("save")["save"] == ""
    finally:
        client.close()


def test_redis_url_is_flushed_between_tests(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("fleet:smoke:leftover", "1")  # the next test using redis_url must not see it
    finally:
        client.close()


@pytest.mark.chaos
def test_redis_kill_and_restart_keeps_aof_writes(redis_server: Any, redis_url: str) -> None:
    port = redis_server.port
    client = redis_server.client()
    try:
        client.set("fleet:smoke:durable", "yes")
        client.rpush("fleet:smoke:list", "a", "b")
    finally:
        client.close()
    time.sleep(1.2)  # appendfsync everysec: let at least one fsync pass (bounded)
    redis_server.kill()
    assert not redis_server.ping()
    redis_server.start()
    assert redis_server.port == port
    client = redis_server.client()
    try:
        assert client.get("fleet:smoke:durable") == b"yes"
        assert client.lrange("fleet:smoke:list", 0, -1) == [b"a", b"b"]
    finally:
        client.close()


@pytest.mark.chaos
def test_redis_graceful_stop_and_start(redis_server: Any, redis_url: str) -> None:
    client = redis_server.client()
    client.set("fleet:smoke:graceful", "1")
    client.close()
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=0.5).ping()
    redis_server.start()
    client = redis_server.client()
    try:
        assert client.get("fleet:smoke:graceful") == b"1"
    finally:
        client.close()


# -- S3 (moto) ------------------------------------------------------------------------------


def test_s3_put_get_through_endpoint(s3_server: Any, s3_bucket: str) -> None:
    assert s3_bucket.startswith("s3://") and s3_bucket.endswith("/fleet")
    bucket = s3_bucket[len("s3://") :].split("/", 1)[0]
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint)
    s3.put_object(Bucket=bucket, Key="fleet/hello.json", Body=b'{"ok": true}')
    body = s3.get_object(Bucket=bucket, Key="fleet/hello.json")["Body"].read()
    assert body == b'{"ok": true}'
    assert s3_server.endpoint.startswith("http://127.0.0.1:")


def test_s3_buckets_are_unique_per_test(s3_server: Any, s3_bucket: str) -> None:
    bucket = s3_bucket[len("s3://") :].split("/", 1)[0]
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.chaos
def test_s3_outage_and_restart_on_same_port(s3_server: Any, s3_bucket: str) -> None:
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError

    bucket = s3_bucket[len("s3://") :].split("/", 1)[0]
    endpoint = s3_server.endpoint
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )
    s3.put_object(Bucket=bucket, Key="fleet/before", Body=b"1")
    s3_server.stop()
    try:
        with pytest.raises(EndpointConnectionError):
            s3.get_object(Bucket=bucket, Key="fleet/before")
    finally:
        s3_server.start()
    assert s3_server.endpoint == endpoint
    assert s3.get_object(Bucket=bucket, Key="fleet/before")["Body"].read() == b"1"


# -- Demo site ------------------------------------------------------------------------------


def test_demo_site_serves_lists_products_and_404(demo_site: Any) -> None:
    assert len(demo_site.product_urls()) == 60
    assert len(demo_site.list_urls()) == 3  # 60 products, 20 per page

    status, final_url, _ = _fetch(demo_site.base_url + "/")
    assert status == 200 and final_url.endswith("/catalogue/page-1.html")

    status, _, body = _fetch(demo_site.list_urls()[0])
    assert status == 200
    assert body.count('<article class="product">') == 20
    assert '<li class="next"><a href="page-2.html">' in body

    status, _, body = _fetch(demo_site.list_urls()[-1])
    assert status == 200 and 'class="next"' not in body

    status, _, body = _fetch(demo_site.product_urls()[0])
    assert status == 200
    assert '<h1 class="name">' in body and '<p class="price">£' in body
    assert '<span class="sku">SKU-00001</span>' in body

    for path in ("/product/61.html", "/product/0.html", "/catalogue/page-4.html", "/nope"):
        assert _fetch(demo_site.base_url + path)[0] == 404, path
    assert demo_site.hits["/product/1.html"] == 1
    assert demo_site.hits["/nope"] == 1


def test_demo_site_content_is_deterministic(demo_site: Any) -> None:
    first = _fetch(demo_site.product_urls()[4])[2]
    second = _fetch(demo_site.product_urls()[4])[2]
    assert first == second
    assert demo_site.hits["/product/5.html"] == 2


def test_demo_site_template_switch_drifts(demo_site: Any) -> None:
    url = demo_site.product_urls()[2]
    assert 'class="name"' in _fetch(url)[2]
    demo_site.template = "v2"
    body = _fetch(url)[2]
    assert 'class="name"' not in body and 'class="price"' not in body
    demo_site.template = "v1"
    assert 'class="name"' in _fetch(url)[2]


# -- Demo spider on live pages --------------------------------------------------------------


def test_demo_spider_parses_live_list_pages(demo_site: Any) -> None:
    spider = DemoShopSpider()
    out = list(spider.parse(_html_response(demo_site.list_urls()[0])))
    assert all(isinstance(r, scrapy.Request) for r in out)
    products = [r for r in out if r.callback == spider.parse_product]
    pages = [r for r in out if r.callback == spider.parse]
    assert [r.url for r in products] == demo_site.product_urls()[:20]
    assert [r.url for r in pages] == [demo_site.list_urls()[1]]

    last = list(spider.parse(_html_response(demo_site.list_urls()[-1])))
    assert [r.url for r in last] == demo_site.product_urls()[40:]


def test_demo_spider_parses_live_product_pages(demo_site: Any) -> None:
    spider = DemoShopSpider()
    for product_id in (1, 17, 60):
        url = f"{demo_site.base_url}/product/{product_id}.html"
        (item,) = list(spider.parse_product(_html_response(url)))
        assert item == demo_site.expected_item(product_id)
        assert isinstance(item["price"], float)
        assert all(item[field] for field in DemoShopSpider.required_fields)

    demo_site.template = "v2"
    (drifted,) = list(spider.parse_product(_html_response(demo_site.product_urls()[0])))
    missing = [f for f in DemoShopSpider.required_fields if not drifted.get(f)]
    assert missing == ["name", "price"]


def test_demo_spider_start_uses_env(demo_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setenv("FLEET_DEMO_URL", demo_site.list_urls()[0])
    spider = DemoShopSpider()

    async def collect() -> list[Any]:
        return [r async for r in spider.start()]

    (req,) = asyncio.run(collect())
    assert req.url == demo_site.list_urls()[0]
    assert req.callback == spider.parse

"""scraper.worker.hedge's parts without a crawler: the p95 estimator, the rate bound, the settings, and
the proxy a hedge goes through (tests/integration/test_hedge.py races real downloads)."""

from __future__ import annotations

import base64
import math
import time

import pytest
from scrapy import Request
from scrapy.settings import Settings

from scraper.worker.hedge import (
    BURST,
    DEFAULT_MIN_DELAY,
    DEFAULT_RATE,
    Budget,
    Hedger,
    Latencies,
    _route,
    hedge_settings,
)
from scraper.worker.proxies import Health, ProxyPool, parse_proxies


def test_no_p95_before_min_samples_then_the_95th_percentile() -> None:
    lat = Latencies(window=100, min_samples=20)
    for _ in range(19):
        lat.add("a.test", 0.01)
    assert lat.p95("a.test") is None
    lat.add("a.test", 0.01)
    assert lat.p95("a.test") == 0.01
    for i in range(80):
        lat.add("a.test", 0.01 if i < 75 else 2.0)  # 5 slow of 100
    assert lat.p95("a.test") == 2.0
    lat.add("a.test", 0.01)  # the oldest falls out of the window; the cache is dropped on add
    assert lat.p95("a.test") == 2.0
    assert lat.p95("other.test") is None


def test_window_and_domains_are_bounded() -> None:
    lat = Latencies(window=8, min_samples=1, max_domains=3)
    for i in range(100):
        lat.add("a.test", float(i))
    assert lat.p95("a.test") == 99.0 and len(lat._samples["a.test"]) == 8
    for d in ("b.test", "c.test", "d.test"):
        lat.add(d, 1.0)
    assert list(lat._samples) == ["b.test", "c.test", "d.test"]  # a.test, least recently used, is gone
    assert lat.p95("a.test") is None


def test_budget_never_exceeds_rate_times_requests() -> None:
    b = Budget(0.05)
    hedges = 0
    for n in range(1, 1001):
        b.request()
        hedges += b.take()  # every request would like a hedge
        assert hedges <= 0.05 * n + 1e-9
    assert hedges == 50
    idle = Budget(0.5)
    for _ in range(100):
        idle.request()
    assert idle.tokens == BURST  # saved tokens are capped: a burst of stalls gets at most BURST hedges
    assert not Budget(0.0).take()


def test_settings_defaults_and_refusals() -> None:
    s = hedge_settings(Settings())
    assert (s.enabled, s.rate, s.min_delay) == (False, DEFAULT_RATE, DEFAULT_MIN_DELAY)
    s = hedge_settings(Settings({"FLEET_HEDGE": "true", "FLEET_HEDGE_RATE": "0.2", "FLEET_HEDGE_MIN_DELAY": 0.1}))
    assert (s.enabled, s.rate, s.min_delay) == (True, 0.2, 0.1)
    for bad in ({"FLEET_HEDGE_RATE": "lots"}, {"FLEET_HEDGE_RATE": 1.5}, {"FLEET_HEDGE_RATE": math.nan},
                {"FLEET_HEDGE_MIN_DELAY": -1}, {"FLEET_HEDGE": "maybe"}):
        with pytest.raises(ValueError) as exc:
            hedge_settings(Settings(bad))
        assert "\n" not in str(exc.value) and next(iter(bad)) in str(exc.value)


def test_only_idempotent_plain_requests_are_eligible() -> None:
    assert Hedger.eligible(Request("http://a.test/")) and Hedger.eligible(Request("http://a.test/", method="HEAD"))
    assert not Hedger.eligible(Request("http://a.test/", method="POST"))
    assert not Hedger.eligible(Request("http://a.test/", meta={"playwright": True}))


def test_alternative_is_another_healthy_proxy_and_route_swaps_credentials() -> None:
    proxies = parse_proxies("http://u1:pw1@10.0.0.1:8080,http://u2:pw%3A2@10.0.0.2:8080,http://10.0.0.3:8080")
    pool = ProxyPool(proxies, None)
    a, b, c = proxies
    for _ in range(20):
        alt = pool.alternative("x.test", a.id)
        assert alt is not None and alt.id != a.id
    pool.view("x.test").health[b.id] = Health(cooling_until=time.time() + 60)
    assert pool.alternative("x.test", a.id) == c
    pool.view("x.test").health[c.id] = Health(cooling_until=time.time() + 60)
    assert pool.alternative("x.test", a.id) is None  # the hedge then goes through the same proxy

    req = Request("http://x.test/", headers={"Proxy-Authorization": "Basic old"}, meta={"proxy": "http://10.0.0.1:8080"})
    _route(req, b)
    assert req.meta["proxy"] == "http://10.0.0.2:8080" and req.meta["fleet_proxy_id"] == b.id
    assert req.headers[b"Proxy-Authorization"] == b"Basic " + base64.b64encode(b"u2:pw:2")
    _route(req, c)
    assert b"Proxy-Authorization" not in req.headers and "_auth_proxy" not in req.meta


def test_a_bad_hedge_setting_is_refused_at_start_up() -> None:
    from scrapy import Spider

    from scraper.worker.catalog import SettingsError, base_settings, worker_settings

    class Bad(Spider):
        name = "bad_hedge"
        custom_settings = {"FLEET_HEDGE": True, "FLEET_HEDGE_RATE": "half"}

    with pytest.raises(SettingsError, match=r"bad_hedge.*FLEET_HEDGE_RATE"):
        worker_settings(Bad, base_settings())

    class Good(Spider):
        name = "good_hedge"
        custom_settings = {"FLEET_HEDGE": True, "FLEET_HEDGE_RATE": 0.1}

    worker_settings(Good, base_settings())

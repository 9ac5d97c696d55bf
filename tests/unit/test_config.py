"""FleetConfig.from_env (defaults, overrides, errors that name the variable) and log redaction."""

from __future__ import annotations

import os

import pytest

from scraper.infra.config import ConfigError, FleetConfig
from scraper.infra.redact import redact


def test_defaults_from_empty_env() -> None:
    cfg = FleetConfig.from_env({})
    assert cfg.redis_url is None
    assert cfg.store == "file://./data"
    assert cfg.spider_modules == ()
    assert cfg.spiders_dir is None
    assert cfg.lease_seconds == 60.0
    assert cfg.dedup_ttl == 48 * 3600
    assert cfg.concurrency == 32
    assert cfg.prefetch is None
    assert cfg.commit_batch == 64
    assert cfg.commit_interval == 0.02
    assert cfg.retry_base == 2.0
    assert cfg.retry_cap == 120.0
    assert cfg.retry_max == 3
    assert cfg.rotate_max == 5
    assert cfg.proxies is None
    assert cfg.dlq_maxlen == 100_000
    assert cfg.shutdown_grace == 25.0
    assert cfg.redis_outage_max == 300.0
    assert cfg.store_outage_max == 300.0  # the same patience as for Redis
    assert cfg.store_raw == "all"
    assert cfg.worker_id.endswith(f"-{os.getpid()}")
    assert cfg.alert_webhook is None
    assert cfg.allow_private is True
    assert cfg.log_level == "INFO"


def test_blank_values_mean_unset() -> None:
    cfg = FleetConfig.from_env(
        {"FLEET_LEASE_SECONDS": "  ", "FLEET_STORE": "", "FLEET_PREFETCH": " "}
    )
    assert cfg.lease_seconds == 60.0
    assert cfg.store == "file://./data"
    assert cfg.prefetch is None


def test_explicit_env_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CONCURRENCY", "7")
    assert FleetConfig.from_env({}).concurrency == 32
    assert FleetConfig.from_env().concurrency == 7  # None: read os.environ


def test_overrides() -> None:
    env = {
        "FLEET_REDIS_URL": "redis://user:pw@redis.internal:6379/2",
        "FLEET_STORE": "s3://bucket/prefix",
        "FLEET_SPIDER_MODULES": " a.spiders , b.spiders,, ",
        "FLEET_SPIDERS_DIR": "/specs",
        "FLEET_LEASE_SECONDS": "12.5",
        "FLEET_DEDUP_TTL": "3600",
        "FLEET_CONCURRENCY": "8",
        "FLEET_PREFETCH": "0",
        "FLEET_COMMIT_BATCH": "16",
        "FLEET_COMMIT_INTERVAL": "0.5",
        "FLEET_RETRY_BASE": "0.25",
        "FLEET_RETRY_CAP": "9",
        "FLEET_RETRY_MAX": "1",
        "FLEET_ROTATE_MAX": "2",
        "FLEET_PROXIES": "http://p1:8080,http://p2:8080",
        "FLEET_DLQ_MAXLEN": "500",
        "FLEET_SHUTDOWN_GRACE": "3",
        "FLEET_REDIS_OUTAGE_MAX": "30",
        "FLEET_STORE_OUTAGE_MAX": "45",
        "FLEET_STORE_RAW": "Items",
        "FLEET_WORKER_ID": "w-17",
        "FLEET_ALERT_WEBHOOK": "https://hooks.example/x",
        "FLEET_ALLOW_PRIVATE": "no",
        "FLEET_LOG_LEVEL": "debug",
    }
    cfg = FleetConfig.from_env(env)
    assert cfg.redis_url == "redis://user:pw@redis.internal:6379/2"
    assert cfg.store == "s3://bucket/prefix"
    assert cfg.spider_modules == ("a.spiders", "b.spiders")
    assert cfg.spiders_dir == "/specs"
    assert cfg.lease_seconds == 12.5
    assert cfg.dedup_ttl == 3600
    assert cfg.concurrency == 8
    assert cfg.prefetch == 0
    assert cfg.commit_batch == 16
    assert cfg.commit_interval == 0.5
    assert cfg.retry_base == 0.25
    assert cfg.retry_cap == 9.0
    assert cfg.retry_max == 1
    assert cfg.rotate_max == 2
    assert cfg.proxies == "http://p1:8080,http://p2:8080"
    assert cfg.dlq_maxlen == 500
    assert cfg.shutdown_grace == 3.0
    assert cfg.redis_outage_max == 30.0
    assert cfg.store_outage_max == 45.0
    assert cfg.store_raw == "items"
    assert cfg.worker_id == "w-17"
    assert cfg.alert_webhook == "https://hooks.example/x"
    assert cfg.allow_private is False
    assert cfg.log_level == "DEBUG"


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no"])
def test_allow_private_off(value: str) -> None:
    assert FleetConfig.from_env({"FLEET_ALLOW_PRIVATE": value}).allow_private is False


@pytest.mark.parametrize(
    "name,value",
    [
        ("FLEET_LEASE_SECONDS", "sixty"),
        ("FLEET_LEASE_SECONDS", "0.1"),  # below the minimum
        ("FLEET_LEASE_SECONDS", "-5"),
        ("FLEET_DEDUP_TTL", "2d"),
        ("FLEET_DEDUP_TTL", "0"),
        ("FLEET_DEDUP_TTL", "99999999999999999999"),  # past what a Redis deadline can hold
        ("FLEET_CONCURRENCY", "1.5"),
        ("FLEET_CONCURRENCY", "0"),
        ("FLEET_PREFETCH", "lots"),
        ("FLEET_PREFETCH", "-1"),
        ("FLEET_COMMIT_BATCH", "x"),
        ("FLEET_COMMIT_INTERVAL", "1s"),
        ("FLEET_RETRY_BASE", "two"),
        ("FLEET_RETRY_CAP", "-1"),
        ("FLEET_RETRY_MAX", "3.0"),
        ("FLEET_ROTATE_MAX", "five"),
        ("FLEET_DLQ_MAXLEN", "5"),
        ("FLEET_SHUTDOWN_GRACE", "25s"),
        ("FLEET_REDIS_OUTAGE_MAX", "forever"),
        ("FLEET_STORE_OUTAGE_MAX", "-1"),
        ("FLEET_STORE_RAW", "some"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        FleetConfig.from_env({name: value})
    assert name in str(info.value)
    assert value in str(info.value)


@pytest.mark.parametrize(
    "name,value",
    [("FLEET_LEASE_SECONDS", "nan"), ("FLEET_LEASE_SECONDS", "inf"), ("FLEET_RETRY_CAP", "nan")],
)
def test_non_finite_numbers_rejected(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        FleetConfig.from_env({name: value})


# -- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("http://user:pass@proxy.example:8080", "http://***@proxy.example:8080"),
        ("socks5h://alice:s3cr%40t@10.0.0.1:1080", "socks5h://***@10.0.0.1:1080"),
        ("redis://default:hunter2@redis.internal:6379/0", "redis://***@redis.internal:6379/0"),
        ("rediss://:onlypassword@cache.example:6380", "rediss://***@cache.example:6380"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("https://shop.example/p/1?email=a@b.c", "https://shop.example/p/1?email=a@b.c"),
        (
            "proxy failed: http://u1:p1@a:1 then http://u2:p2@b:2",
            "proxy failed: http://***@a:1 then http://***@b:2",
        ),
        # an unencoded '/' in the password (redis-py and proxies accept it) is still the password
        ("redis://u:p/w@h:1/0", "redis://***@h:1/0"),
        ("redis://:a/b/c@cache:6379", "redis://***@cache:6379"),
        ("https://medium.com/@user", "https://medium.com/@user"),  # a path's '@' is not userinfo
        ("redis://u:p@ss@host:6379/0", "redis://***@host:6379/0"),  # an unencoded '@' in the password
        ("http://u:" + "p" * 1500 + "@host:1/", "http://***@host:1/"),  # a token-sized password
    ],
)
def test_redact_strips_userinfo(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_stays_fast_on_hostile_lines() -> None:
    import time

    for text in ("@ " + "x" * 50_000, "a://:" * 10_000 + "@", "x@" * 25_000, "http://a:" + "b@" * 25_000):
        t0 = time.perf_counter()
        redact(text)
        assert time.perf_counter() - t0 < 2.0, text[:20]


def test_redact_data_reaches_every_string_and_secret_field() -> None:
    from scraper.infra.redact import redact_data

    data = {"url": "http://u:pw@h.test/a", "headers": {"Cookie": "sid=1", "Location": "ftp://x:y@z/"},
            "samples": [{"url": "https://a:b@c.test/"}], "n": 3, "http://k:v@key.test/": None}
    out = redact_data(data)
    assert "pw" not in str(out) and "sid=1" not in str(out) and ":y@" not in str(out) and ":b@" not in str(out)
    assert out == {"url": "http://***@h.test/a", "headers": {"Cookie": "***", "Location": "ftp://***@z/"},
                   "samples": [{"url": "https://***@c.test/"}], "n": 3, "http://***@key.test/": None}


@pytest.mark.parametrize("name,value", [
    ("FLEET_BREAKER_RATE", "1.5"), ("FLEET_LOG_LEVEL", "LOUD"), ("FLEET_ALERT_WEBHOOK", "not a url"),
    ("FLEET_ALERT_WEBHOOK", "file:///etc/passwd"), ("FLEET_CONCURRENCY", "5000"),
])
def test_values_that_cannot_be_right_are_config_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FleetConfig.from_env({name: value})
    assert name in str(exc.value) and ("passwd" not in str(exc.value))


def test_log_level_warn_is_warning() -> None:
    assert FleetConfig.from_env({"FLEET_LOG_LEVEL": "warn"}).log_level == "WARNING"

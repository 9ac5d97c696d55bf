"""A page that takes its worker down every time (an OOM kill, a crash in a C extension) must not go round
the fleet forever: after FLEET_MAX_LOST_DELIVERIES deliveries without an outcome it goes to the DLQ
unfetched. The reaper counts the lost deliveries in the envelope (test_queue_lua checks that part)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urljoin

import pytest
import redis

from scraper.devtools.demo_site import DemoSite
from tests.fleetproc import counts, fleet_env, fleet_json, start_worker, wait_all

pytestmark = pytest.mark.integration


def test_a_request_lost_too_often_goes_to_the_dlq_unfetched(redis_url: str, tmp_path: Path) -> None:
    with DemoSite(n_products=5, per_page=5).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_MAX_LOST_DELIVERIES="3")
        fleet_json("seed", "demo_shop", "--url", urljoin(site.start_url, "/product/1.html"), "--run", "p1",
                   "--callback", "parse_product", env=env)
        client = redis.Redis.from_url(redis_url)
        try:
            prefix = "fleet:{demo_shop}:"
            (entry,) = client.zrange(prefix + "ready", 0, -1)
            raw = client.hget(prefix + "env", entry)
            client.hset(prefix + "env", entry, b'{"lost":3,' + raw[1:])  # the reaper took it back 3 times
            log = tmp_path / "w.log"
            assert wait_all([start_worker("demo_shop", env, log, "--until-idle", "1")], 90) == [0]
            (dlq,) = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(prefix + "dlq")]
        finally:
            client.close()
    assert (dlq["class"], dlq["reason"], dlq["run"]) == ("D", "poison:redelivered", "p1"), dlq
    assert dlq["url"].endswith("/product/1.html")
    assert json.loads(dlq["attempts"]) == {}
    assert site.hits.get("/product/1.html", 0) == 0  # never fetched again
    assert counts(redis_url, "demo_shop") == {"ready": 0, "inflight": 0, "delayed": 0, "dlq": 1}

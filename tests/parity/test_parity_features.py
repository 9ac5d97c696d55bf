"""Parity: requests, items, statuses, errbacks and sessions under plain Scrapy and under Fleet; where
Fleet differs, the difference is the one README's "Differences from plain Scrapy" table documents."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parity.harness import compare, diff
from tests.parity.site import ParitySite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site() -> Iterator[ParitySite]:
    s = ParitySite().start()
    try:
        yield s
    finally:
        s.stop()


def test_requests_items_pipelines_middlewares(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """FormRequest / JsonRequest bodies, cb_kwargs, priorities, async callbacks, follow_all, DEPTH_LIMIT,
    ItemLoader into dict / Item / dataclass / attrs, a DropItem pipeline and a spider middleware from
    custom_settings: the same items."""
    ref, got = compare("parity_features", site.base, tmp_path, redis_url)
    assert sum(ref.values()) == 9  # 3 list pages (DEPTH_LIMIT 2), 4 of 6 items (2 dropped), 2 echoes
    kinds = {json.loads(x).get("kind") for x in ref}
    assert {"dict", "ProductItem", "ProductData", "ProductAttrs"} <= kinds
    assert got.code == 0, got.stderr[-2000:]
    assert not diff(ref, got.items), diff(ref, got.items)


def test_statuses_redirects_dont_filter_and_errbacks(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """handle_httpstatus_list / handle_httpstatus_all reach the callback, redirect chains and meta refresh
    are followed, dont_filter requests for one URL are each fetched. Documented difference: a failed
    request's errback output is not stored; the request is in the DLQ (fleet run exits 4)."""
    ref, got = compare("parity_status", site.base, tmp_path, redis_url)
    errback_item = json.dumps({"errback": "HttpError", "url": f"{site.base}/status/404?e=1"}, sort_keys=True)
    assert ref[errback_item] == 1 and sum(ref.values()) == 9
    assert got.code == 4, got.stderr[-2000:]
    assert got.summary["dlq"] == 1
    assert got.items == ref - Counter({errback_item: 1}), diff(ref, got.items)  # the documented difference, only it


def test_login_then_crawl_session_cookie(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """Documented difference: Fleet workers keep no cookie session (COOKIES_ENABLED is off, and a jar would
    be per worker process while the next request may go to another worker): the pages behind the login
    are fetched without the session cookie."""
    ref, got = compare("parity_login", site.base, tmp_path, redis_url)
    assert got.code == 0, got.stderr[-2000:]
    assert {json.loads(x)["who"] for x in ref} == {"alice"} and sum(ref.values()) == 4
    anonymous = {json.dumps({**json.loads(x), "who": "anonymous"}, sort_keys=True): n for x, n in ref.items()}
    assert dict(got.items) == anonymous, diff(ref, got.items)

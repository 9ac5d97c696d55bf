"""Parity: requests, items, statuses, errbacks and sessions under plain Scrapy and under Fleet; where
Fleet differs, the difference is the one README's "Differences from plain Scrapy" table documents."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fleetproc import fleet_json
from tests.parity.harness import compare, diff
from tests.parity.site import ParitySite

pytestmark = pytest.mark.integration


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


def _json_or_none(line: str) -> dict[str, Any] | None:
    """One JSON log line of a fleet run (FLEET_LOG_FORMAT=json), else None."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


# a small class-A budget, so that spending it takes a fraction of a second (FLEET_RETRY_*, scraper.infra.config)
FAST_RETRIES = {"FLEET_RETRY_MAX": "1", "FLEET_RETRY_BASE": "0.05", "FLEET_RETRY_CAP": "0.2"}


def test_statuses_redirects_dont_filter_and_errbacks(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """handle_httpstatus_list (class attribute and meta) / handle_httpstatus_all reach the callback,
    redirect chains and meta refresh are followed, dont_filter requests for one URL are each fetched.

    Errbacks: under plain Scrapy a hard status the spider does not handle, a 503 every time and a
    connection refused reach the errback (the last two after Scrapy's retries) and what it yields is
    kept. Documented difference: under Fleet each of them goes to the DLQ (a 410 at once as D, the 503
    and the refused connection as ``exhausted:A`` after FLEET_RETRY_MAX retries), no errback item is
    stored, and fleet run exits 4. The errback is still called there, with IgnoreRequest, once per failed
    attempt."""
    ref, got = compare("parity_status", site.base, tmp_path, redis_url, site_env=site.env(), **FAST_RETRIES)
    errbacks = {json.loads(x)["url"]: json.loads(x)["errback"] for x in ref if "errback" in json.loads(x)}
    status_410, status_503, refused = (f"{site.base}/status/410?e=1", f"{site.base}/status/503?e=1",
                                       f"{site.closed}/down?e=1")
    assert errbacks.keys() == {status_410, status_503, refused}, errbacks
    assert errbacks[status_410] == errbacks[status_503] == "HttpError"
    assert errbacks[refused] == "DownloadConnectionRefusedError", errbacks  # Scrapy wraps Twisted's error
    assert sum(ref.values()) == 2 + 4 + 3 + 3  # landed x2, again x4, 404 / 418 / 410 callbacks, 3 errbacks
    assert {json.loads(x)["status"] for x in ref if "status" in json.loads(x)} == {404, 418, 410}

    assert got.code == 4, got.stderr[-2000:]
    assert got.summary["dlq"] == 3
    assert not [x for x in got.items if "errback" in json.loads(x)], "an errback item was stored under Fleet"
    assert got.items == Counter({x: n for x, n in ref.items() if "errback" not in json.loads(x)}), diff(ref, got.items)
    dlq = {row["url"]: row for row in fleet_json("dlq", "parity_status", "list", "--json", env=got.env)}
    assert dlq.keys() == {status_410, status_503, refused}, dlq
    assert (dlq[status_410]["reason"], dlq[status_410]["status"]) == ("http:410", "410")
    assert json.loads(dlq[status_410]["attempts"]) == {"D": 1}
    assert (dlq[status_503]["reason"], dlq[status_503]["status"], dlq[status_503]["detail"]) == \
        ("exhausted:A", "503", "http:503")
    assert (dlq[refused]["reason"], dlq[refused]["detail"]) == ("exhausted:A", "net:DownloadConnectionRefusedError")
    assert json.loads(dlq[status_503]["attempts"]) == json.loads(dlq[refused]["attempts"]) == {"A": 2}
    # plain Scrapy: 1 + RETRY_TIMES (2) fetches of the 503; Fleet: 1 + FLEET_RETRY_MAX (1)
    assert [h for h in site.hits if h[1] == "/status/503?e=1"] == [("GET", "/status/503?e=1")] * (3 + 2)
    # under Fleet the errback still runs, on every failed attempt (retried ones too), with IgnoreRequest
    # (the raw error is the DLQ's evidence); on_error logs each call
    calls = Counter(tuple(line["event"].split()[1:]) for line in map(_json_or_none, got.stderr.splitlines())
                    if line and str(line.get("event", "")).startswith("parity_errback "))
    assert calls == {("IgnoreRequest", status_410): 1, ("IgnoreRequest", status_503): 2,
                     ("IgnoreRequest", refused): 2}, calls


def test_login_then_crawl_session_cookie(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """Documented difference: Fleet workers keep no cookie session (COOKIES_ENABLED is off, and a jar would
    be per worker process while the next request may go to another worker): the pages behind the login
    are fetched without the session cookie."""
    ref, got = compare("parity_login", site.base, tmp_path, redis_url)
    assert got.code == 0, got.stderr[-2000:]
    assert {json.loads(x)["who"] for x in ref} == {"alice"} and sum(ref.values()) == 4
    anonymous = {json.dumps({**json.loads(x), "who": "anonymous"}, sort_keys=True): n for x, n in ref.items()}
    assert dict(got.items) == anonymous, diff(ref, got.items)


def test_cookiejar_sessions(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """Two ``meta["cookiejar"]`` sessions, each given its own cookie by the site. Plain Scrapy sends each
    jar's cookie with that jar's follow-up; documented difference: Fleet keeps no cookies (COOKIES_ENABLED
    is off), so both follow-ups go without one, while ``meta["cookiejar"]`` itself still travels."""
    ref, got = compare("parity_cookiejar", site.base, tmp_path, redis_url)
    assert got.code == 0, got.stderr[-2000:]
    assert ref == Counter(json.dumps({"jar": n, "session": f"j{n}"}, sort_keys=True) for n in (1, 2))
    assert got.items == Counter(json.dumps({"jar": n, "session": "none"}, sort_keys=True) for n in (1, 2)), \
        diff(ref, got.items)


def test_redirect_targets_are_deduplicated(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """A redirect whose target (or a hop of whose chain) was already scheduled is dropped, and a redirect
    that landed records its hops: a later link to the landed page or to a hop is not followed. A
    dont_filter request's redirect is neither checked nor recorded. The same items; under Fleet the
    dropped redirects are settled as ignored (fleet/redirect_filtered) and the run's counts reconcile."""
    ref, got = compare("parity_redirect_dedup", site.base, tmp_path, redis_url)
    landed = Counter((d.get("landed") or d.get("second") or d.get("back"), d.get("redirects"))
                     for d in map(json.loads, ref.elements()))
    assert landed == Counter({(f"{site.base}/landed/redirect", 0): 1, (f"{site.base}/landed/mid", 1): 1,
                              (f"{site.base}/landed/second", 2): 1, (f"{site.base}/item/7-7", None): 1,
                              (f"{site.base}/landed/df", 1): 1, (f"{site.base}/landed/df", 0): 1}), ref
    assert got.code == 0, got.stderr[-2000:]
    assert not diff(ref, got.items), diff(ref, got.items)
    assert got.summary["ignored"] == 2, got.summary  # /redirect/2 and /redirect/2?to=mid
    assert got.summary["seen"] == got.summary["done"], got.summary


def test_a_raising_callback_keeps_nothing_and_goes_to_the_dlq(site: ParitySite, tmp_path: Path,
                                                               redis_url: str) -> None:
    """Plain Scrapy keeps what a callback yielded before it raised (the item, the three item pages it
    linked). Documented difference: Fleet settles a request as one unit, so the item is not written, the
    links are not followed, the request is in the DLQ as callback_error with the exception, and fleet run
    exits 4 (after a fix: fleet dlq SPIDER requeue --reason callback_error)."""
    ref, got = compare("parity_raises", site.base, tmp_path, redis_url)
    assert ref == Counter([json.dumps({"list": f"{site.base}/list?page=1"})]
                          + [json.dumps({"item": f"{site.base}/item/1-{i}"}) for i in (1, 2, 3)]), ref
    assert got.code == 4, got.stderr[-2000:]
    assert got.items == Counter(), got.items
    dlq = fleet_json("dlq", "parity_raises", "list", "--json", env=got.env)
    assert [(row["url"], row["reason"], row["detail"]) for row in dlq] == \
        [(f"{site.base}/list?page=1", "callback_error:ValueError", "odd list page")], dlq
    assert got.summary["dlq"] == 1 and got.summary["seen"] == 1, got.summary

"""``fleet replay``: run a spider callback offline on a stored raw snapshot.

The engineer's loop after a drift alert: fix the selectors, replay the very page that drifted, and
only then reset the breaker. No network, no queue: the snapshot comes from the object store.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

from scrapy import Request, Spider
from scrapy.http import HtmlResponse
from scrapy.spiders import CrawlSpider

from scraper.cli.common import spider_instance
from scraper.infra.config import FleetConfig
from scraper.policy import drift
from scraper.queue.entrycheck import callback_name_ok
from scraper.queue.envelope import EnvelopeError, fp64
from scraper.queue.names import is_name
from scraper.store.backends import ObjectStore, open_store
from scraper.store.objects import evidence_key, item_to_dict, items_key, raw_key

__all__ = ["ReplayError", "run_replay"]

_KEY_RE = re.compile(
    r"^(raw|items|evidence)/spider=(?P<spider>[^/]+)/run=(?P<run>[^/]+)/(?:[^/]+/)?(?P<fp>[0-9a-f]{16})\."
)


class ReplayError(RuntimeError):
    pass


def _load_evidence(store: ObjectStore, spider: str, run: str, fp: str) -> dict[str, Any]:
    """The page's evidence record, its fields type-checked (the store's contents are input like any other:
    a field of the wrong type is left out, never a traceback)."""
    for cls in ("C", "D"):
        try:
            doc = json.loads(store.get(evidence_key(spider, run, cls, fp)))
        except KeyError:
            continue
        except ValueError:  # not JSON (or not UTF-8): as if there were none
            return {}
        if not isinstance(doc, dict):
            return {}
        kinds = {"url": str, "callback": str, "cb_kwargs": dict, "meta": dict, "content_type": str}
        out = {k: v for k, v in doc.items() if k in kinds and isinstance(v, kinds[k])}
        if not str(out.get("url", "")).startswith(("http://", "https://")):
            out.pop("url", None)
        if not callback_name_ok(str(out.get("callback", "parse"))):
            out.pop("callback", None)
        if "content_type" in out and not out["content_type"].isascii():
            out.pop("content_type")  # a header value: latin-1 at most; a surrogate would not even encode
        return out
    return {}


def _items_url(store: ObjectStore, spider: str, run: str, fp: str) -> str | None:
    """The page's URL from its items object (``_meta.url`` on every line), for a page with no evidence."""
    try:
        first = store.get(items_key(spider, run, fp)).split(b"\n", 1)[0]
        url = json.loads(first)["_meta"]["url"]
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def _rule_callback(spider: CrawlSpider, url: str, meta: dict[str, Any]) -> str:
    """A CrawlSpider page's callback when nothing recorded its rule: ``_callback`` with the first rule that
    has a callback and whose link extractor matches the URL (as the crawl chose it, unless two rules match),
    written to ``meta["rule"]``, an extractor with allow patterns first; a page no such rule matches is a
    start page (``_parse``). A guess from the URL alone: the evidence of a drifted page records the rule."""
    rules = [(i, r) for i, r in enumerate(getattr(spider, "_rules", None) or ())
             if r.callback is not None and r.link_extractor.matches(url)]
    # an extractor with allow patterns names its pages; one without (restrict_css alone) matches every URL, so
    # it is taken only for a page that is not one of the spider's start URLs
    specific = [(i, r) for i, r in rules if getattr(r.link_extractor, "allow_res", None)]
    starts = {str(u) for u in getattr(spider, "start_urls", ()) or ()}
    chosen = specific or ([] if url in starts else rules)
    if not chosen:
        return "_parse"
    meta.setdefault("rule", chosen[0][0])
    return "_callback"


async def _collect(result: Any) -> list[Any]:
    out: list[Any] = []
    if result is None:
        return out
    if inspect.isasyncgen(result):
        async for x in result:
            out.append(x)
    elif inspect.iscoroutine(result):
        out += await _collect(await result)
    else:
        out += list(result)
    return out


def run_replay(
    cfg: FleetConfig, spidercls: type[Spider], *, url: str | None, key: str | None, run: str | None,
    callback: str | None, runs_lookup: Callable[[], list[str]], spider_args: dict[str, str] | None = None,
) -> dict[str, Any]:
    store = open_store(cfg.store)
    name = spidercls.name
    spider: Spider | None = None
    if key:
        m = _KEY_RE.match(key.strip())
        if not m:
            raise ReplayError(f"--key {key!r} is not a raw/, items/ or evidence/ key of Fleet's layout")
        if m.group("spider") != name:
            raise ReplayError(f"--key belongs to spider {m.group('spider')!r}, not {name!r}")
        run, fp = m.group("run"), m.group("fp")
        if not is_name(run):
            raise ReplayError(f"--key names the run {run!r}, which is not a run id Fleet writes")
    else:
        assert url is not None
        # the spider's own REQUEST_FINGERPRINTER_CLASS, if it has one, named the page's objects
        spider = spider_instance(spidercls, cfg, "to replay its callback", spider_args)
        try:
            fp = fp64(Request(url), spider)
        except (ValueError, EnvelopeError) as exc:
            raise ReplayError(f"--url {url!r}: {exc}") from None
    runs = [run] if run else [r for r in runs_lookup() if is_name(r)]
    body = None
    for r in runs:
        try:
            body = store.get(raw_key(name, r, fp))
            run = r
            break
        except KeyError:
            continue
    if body is None or run is None:
        raise ReplayError(
            f"no stored snapshot for fingerprint {fp} of spider {name!r}"
            + (f" in run {runs[0]!r}" if len(runs) == 1 else f" in any of {len(runs)} runs")
            + " (snapshots are kept under raw/ when FLEET_STORE_RAW is all or items)"
        )
    evidence = _load_evidence(store, name, run, fp)
    page_url = url or evidence.get("url") or _items_url(store, name, run, fp)
    if not page_url:
        raise ReplayError(f"no evidence record nor items object of fingerprint {fp} names the page's URL: "
                          "replay it with --url URL instead of --key")
    if spider is None:
        spider = spider_instance(spidercls, cfg, "to replay its callback", spider_args)
    meta = dict(evidence["meta"]) if isinstance(evidence.get("meta"), dict) else {}
    cb_name = callback or evidence.get("callback") or "parse"
    if isinstance(spider, CrawlSpider) and (cb_name == "parse" or (cb_name == "_callback" and "rule" not in meta)):
        # a CrawlSpider's pages go through its rules (Scrapy calls _parse for a start page, _callback with
        # meta["rule"] for a rule's page; its parse is not to be used): the rule is found from the URL
        cb_name = _rule_callback(spider, page_url, meta)
    cb = getattr(spider, cb_name, None)
    if cb is None:
        raise ReplayError(f"spider {name!r} has no callback {cb_name!r}")
    try:
        request = Request(page_url, callback=cb, cb_kwargs=dict(evidence.get("cb_kwargs") or {}), meta=meta)
    except (TypeError, ValueError) as exc:  # --url or the evidence's url is no URL a Request takes
        raise ReplayError(f"cannot replay {page_url!r}: {exc}") from None
    # the page's own charset: its Content-Type as fetched (evidence), else as Scrapy infers it without
    # headers (a BOM, a <meta charset>, UTF-8, then cp1252); never UTF-8 forced on a Latin-1 or Shift-JIS page
    ctype = evidence.get("content_type")
    headers = {"Content-Type": ctype} if isinstance(ctype, str) and ctype else None
    response = HtmlResponse(url=page_url, body=gzip.decompress(body), headers=headers, request=request)
    error = None
    try:
        outputs = asyncio.run(_collect(cb(response, **request.cb_kwargs)))
    except Exception as exc:
        outputs, error = [], f"{type(exc).__name__}: {exc}"
    items = [item_to_dict(o) for o in outputs if not isinstance(o, Request)]
    requests = [o.url for o in outputs if isinstance(o, Request)]
    verdict = drift.check(spider, cb_name, items) if error is None else drift.DriftVerdict("callback_error")
    return {
        "spider": name, "run": run, "fingerprint": fp, "url": page_url, "callback": cb_name,
        "snapshot": raw_key(name, run, fp), "items": items, "requests": len(requests),
        "required_fields": list(getattr(spider, "required_fields", ()) or ()),
        "ok": verdict is None, "drift": None if verdict is None else {
            "reason": verdict.reason, "missing": list(verdict.missing)}, "error": error,
    }

"""Seeding a run: URLs (``--urls``, ``--url``) or a spider's start requests into its queue.

Why here and not in scraper.cli.app: ``fleet seed``, ``fleet run`` and ``fleet demo`` all seed, and demo must
not import the CLI module. A URL Fleet would not fetch is reported on stderr and counted, never enqueued.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.markup import escape
from scrapy import Request, Spider

from scraper.cli.common import EXIT_ARGS, connect, err, fail, fleet_settings, redis_url_for, spider_instance
from scraper.infra import log, progress
from scraper.infra.config import FleetConfig
from scraper.policy.urls import DEFAULT_SCHEMES, URLRefused, refusal, url_lines
from scraper.queue.envelope import Envelope, EnvelopeError, SeedEncoder
from scraper.queue.fingerprint import custom_fingerprinter, fp64
from scraper.queue.keys import Keys
from scraper.queue.shards import open_queue
from scraper.queue.startfp import mark_start
from scraper.worker.catalog import worker_settings
from scraper.worker.redisspider import is_redis_spider

__all__ = ["Rejected", "check_urls_path", "read_urls", "seed_entries", "seed_run", "start_requests"]


def check_urls_path(path: str) -> Path:
    """--urls names something to read (a file, a pipe such as ``<(...)``, a device), or a one-line error:
    checked before a command writes anything."""
    p = Path(path)
    if p.is_dir():
        raise fail(f"--urls {path}: is a directory (give a file with one URL a line, or - for stdin)")
    if not p.exists():
        raise fail(f"--urls {path}: no such file (give a file with one URL a line, or - for stdin)")
    return p


def read_urls(path: str) -> Iterator[str | URLRefused]:
    """The URLs of --urls (a file, or - for stdin), or a URLRefused per line that is not one (scraper.policy.urls)."""
    if path == "-":
        yield from url_lines(sys.stdin.buffer)
        return
    p = check_urls_path(path)
    try:
        stream = p.open("rb")
    except OSError as exc:
        raise fail(f"--urls {path}: cannot read it: {exc.strerror or exc}") from None
    with stream:
        yield from url_lines(stream)


class Rejected:
    """Seed input that is not a URL Fleet fetches: one line on stderr each, and a count."""

    def __init__(self, schemes: tuple[str, ...]) -> None:
        self.schemes = schemes
        self.count = 0

    def __call__(self, url: str | None, problem: Exception) -> None:
        self.count += 1
        where = f"URL {log.redact(url)[:300]!r}: " if url is not None else ""
        err.print(f"[yellow]rejected[/] {escape(where + str(problem))}", highlight=False, soft_wrap=True)

    def check(self, url: str) -> bool:
        problem = refusal(url, self.schemes)
        if problem is not None:
            self(url, problem)
        return problem is None


async def _start(spider: Spider) -> AsyncIterator[Any]:
    """``spider.start()`` through the spider middlewares' ``process_start``, as Scrapy's engine reads it: a
    middleware may add, change or drop start requests, and Scrapy's StartSpiderMiddleware sets
    ``meta["is_start_request"]``. Middlewares that cannot be built outside a crawl: ``start()`` as it is."""
    from scrapy.core.spidermw import SpiderMiddlewareManager

    def alone(exc: Exception) -> AsyncIterator[Any]:
        err.print(f"[yellow]warning[/] spider {spider.name!r}: its spider middlewares' process_start not applied "
                  f"({type(exc).__name__}: {str(exc)[:200]}); seeding start() as it is", highlight=False, soft_wrap=True)
        return spider.start()

    try:
        chain = await SpiderMiddlewareManager.from_crawler(spider.crawler).process_start()
        if chain is None:
            raise RuntimeError("process_start gave nothing")
        it = chain.__aiter__()
        first = await it.__anext__()
    except StopAsyncIteration:
        return
    except Exception as exc:  # a middleware that needs a running crawl (its engine): start() alone, said once
        async for x in alone(exc):
            yield x
        return
    yield first
    async for x in it:  # past the first request, an error is the chain's: the caller's one-line error
        yield x


async def start_requests(spider: Spider, dropped: list[int] | None = None) -> AsyncIterator[Request]:
    """The requests of ``spider.start()`` (through its spider middlewares' ``process_start``: ``_start``). Anything
    else it yields (an item: Scrapy would store it) has no request whose object could hold it in Fleet: counted in
    ``dropped`` (the seed's ``start_items_dropped``) and left out. An exception in ``start()`` is a one-line error."""
    try:
        async for x in _start(spider):
            if isinstance(x, Request):
                yield x
            elif dropped is not None:
                dropped[0] += 1
    except Exception as exc:
        raise fail(f"spider {spider.name!r}: start() raised {type(exc).__name__}: {exc}") from None


def seed_entries(
    urls: Iterable[str | URLRefused], spider: str, run: str, callback: str | None = None,
    rejected: Rejected | None = None, fingerprinted_by: Spider | None = None,
) -> Iterator[tuple[str, str]]:
    """Queue entries (envelope JSON, fp) for ``urls``, exactly as ``Envelope.for_url`` would make them.
    A URL Fleet would not fetch (scheme, no host, malformed: scraper.policy.urls) is reported and counted in
    ``rejected``, and the others are still enqueued. ``fingerprinted_by``: a spider with its own
    ``REQUEST_FINGERPRINTER_CLASS`` (``custom_fingerprinter``), whose fingerprints its URLs get instead of
    Scrapy's default ones (the template's), so that a link to a seeded URL is known SEEN by the worker."""
    rejected = rejected or Rejected(DEFAULT_SCHEMES)
    entry = SeedEncoder(spider_name=spider, run=run, callback=callback).entry
    if fingerprinted_by is not None:
        def entry(url: str) -> tuple[str, str]:
            env = Envelope.for_url(url, spider_name=spider, run=run)
            env.callback = callback
            env.fp = fp64(Request(env.url), fingerprinted_by)
            return env.dumps(), env.fp
    for url in urls:
        if isinstance(url, URLRefused):
            rejected(None, url)
            continue
        if not rejected.check(url):
            continue
        try:
            yield entry(url)
        except (ValueError, EnvelopeError) as exc:
            rejected(url, exc)


class _SettingsHolder:  # a stand-in spider: what custom_fingerprinter reads of one
    """The spider class's crawler settings (Fleet's, its project's, its custom_settings) without making the spider
    (its ``__init__`` may need spider arguments): enough to learn whether it has its own fingerprinter."""

    def __init__(self, spidercls: type[Spider], cfg: FleetConfig) -> None:
        from scrapy.crawler import Crawler

        self.crawler = Crawler(spidercls, worker_settings(spidercls, fleet_settings(cfg), rendered=False))


async def seed_run(
    cfg: FleetConfig, spidercls: type[Spider], run: str, urls: list[str], urls_file: str | None,
    callback: str | None = None, spider_args: dict[str, str] | None = None,
) -> dict[str, Any]:
    client = await connect(redis_url_for(cfg, spidercls))
    rejected = Rejected(cfg.schemes)
    try:
        if await client.hexists(Keys(spidercls.name).cancelled, run):  # its entries would be dropped at lease
            raise fail(f"run {run!r} of spider {spidercls.name!r} was cancelled (fleet cancel); seed a new --run",
                       EXIT_ARGS)
        q = await open_queue(client, spidercls.name, shards=cfg.queue_shards, dedup_ttl=cfg.dedup_ttl)
        dropped = [0]  # items start() yielded: not stored (start_requests)
        if urls or urls_file:
            def all_urls() -> Iterator[str | URLRefused]:
                yield from urls
                if urls_file:
                    yield from progress.track_urls(read_urls(urls_file), urls_file,
                                                   show=progress.enabled(cfg.log_format))

            by = None
            if custom_fingerprinter(_SettingsHolder(spidercls, cfg)) is not None:
                by = spider_instance(spidercls, cfg, "to fingerprint its URLs", spider_args)
            enq, skipped = await q.seed_entries(
                run, seed_entries(all_urls(), spidercls.name, run, callback, rejected, fingerprinted_by=by))
        else:
            if is_redis_spider(spidercls):  # its start requests pop its Redis key, which the workers feed from
                key = str(getattr(spidercls, "redis_key", None) or "%(name)s:start_urls")
                key = key.replace("%(name)s", spidercls.name)
                raise fail(f"spider {spidercls.name!r} is a scrapy-redis spider fed from its Redis key {key!r}: "
                           "push URLs or JSON there (workers move them into the queue), or pass --urls FILE "
                           "(fleet seed also takes --url URL)")
            spider = spider_instance(spidercls, cfg, "to read its start requests", spider_args)
            envs = []
            async for req in start_requests(spider, dropped):
                if not rejected.check(req.url):
                    continue
                try:
                    env = Envelope.from_request(req, spider_name=spidercls.name, run=run, spider=spider)
                    # a dont_filter start request does not mark its URL SEEN for discovered requests
                    # (Scrapy's semantics; scraper.queue.startfp says why and how it stays idempotent)
                    envs.append(mark_start(env))
                except EnvelopeError as exc:
                    raise fail(f"start request {req.url}: {exc}") from None
            if dropped[0]:
                err.print(f"[yellow]warning[/] spider {escape(spidercls.name)!r}: start() yielded {dropped[0]} "
                          "item(s); Fleet stores items per request, so items from start() are not stored: yield them "
                          "from a callback", highlight=False, soft_wrap=True)
            if not envs and not rejected.count:
                raise fail(
                    f"spider {spidercls.name!r} has no start URLs: pass --urls FILE (fleet seed also takes --url URL)"
                )
            enq, skipped = await q.seed(run, envs)
        result = {"spider": spidercls.name, "run": run, "enqueued": enq, "skipped": skipped}
        if rejected.count:
            result["rejected"] = rejected.count
        if dropped[0]:
            result["start_items_dropped"] = dropped[0]
        return result
    finally:
        await client.aclose()


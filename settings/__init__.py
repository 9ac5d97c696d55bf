"""Scrapy settings module for Fleet workers, and the one place every Fleet setting is documented.

Two layers live here:

* ``FleetConfig`` (in :mod:`scraper.infra.config`; ``settings.fleet`` re-exports it) — twelve-factor
  configuration read once from ``FLEET_*`` environment variables. Every variable is documented there,
  in the table at the top, next to its default.
* The module-level Scrapy settings below — the engine defaults a Fleet worker runs with. A Scrapy
  project's own settings module (scraper.worker.project) and a spider's ``custom_settings`` still win,
  so user spiders run unchanged.
"""

from __future__ import annotations

BOT_NAME = "fleet"

# Spiders bundled with Fleet; FLEET_SPIDER_MODULES extends this list at start-up.
SPIDER_MODULES = ["scraper.spiders"]
NEWSPIDER_MODULE = "scraper.spiders"

# The asyncio reactor lets the scheduler talk to Redis with redis.asyncio on the reactor's own loop.
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"

# The leased Redis queue replaces Scrapy's in-memory scheduler and dupefilter: SEEN/DONE in Redis
# decide duplicates, so a redelivered request is never dropped as "already seen".
SCHEDULER = "scraper.worker.scheduler.FleetScheduler"
DUPEFILTER_CLASS = "scrapy.dupefilters.BaseDupeFilter"

# Scrapy 2.19 starts CONCURRENT_ITEMS asyncio tasks per callback output; 8 measured 1.65x faster
# than the stock 100 on small pages (see README, Performance).
CONCURRENT_ITEMS = 8
CONCURRENT_REQUESTS = 32
CONCURRENT_REQUESTS_PER_DOMAIN = 32
DOWNLOAD_DELAY = 0
DOWNLOAD_TIMEOUT = 30

# Bounded memory under hostile content. Scrapy's defaults (1 GiB / 32 MiB) let one body take a worker to
# gigabytes. DOWNLOAD_MAXSIZE bounds a body on the wire (Content-Length over it: refused before the body;
# a streamed body: cancelled once past it) and, decoded, after gzip / deflate / br / zstd: decoding runs
# in 64 KiB steps and stops past the limit (middlewares.decompress), so a 1.4 KB bomb never grows beyond
# it. Either way the request is class D ``body:too_large`` with the sizes and encoding as evidence; an
# undecodable body is D ``body:undecodable``. WARNSIZE only logs. A spider raises or lowers both in its
# custom_settings (or per request: ``download_maxsize`` / ``download_warnsize`` meta).
# Memory bound (tests/integration/test_hostile_content.py): against bombs and 1 GiB / endless bodies, a
# worker's RSS with its writer process stays under 250 MB + 1.15 x CONCURRENT_REQUESTS x DOWNLOAD_MAXSIZE
# (each download buffers at most DOWNLOAD_MAXSIZE, plus its buffer's growth margin, before it is cut
# off): 1.49 GB at concurrency 32 (measured 0.96-1.11 GB), 404 MB at 4 (measured 165 MB). Pages just
# under the limit are parsed by their callback too, which needs memory of its own.
DOWNLOAD_MAXSIZE = 32 * 1024 * 1024
DOWNLOAD_WARNSIZE = 8 * 1024 * 1024
# ... and the tree a callback builds from a body: lxml takes ~130-180 bytes per tag, so a 32 MiB page of tiny
# elements would take a worker to ~1.8 GB. A decoded text body (HTML, plain text, JSON; not XML feeds) with more
# tags than this (counted as its '<' characters, an upper bound) is refused before any callback parses it:
# class D ``body:too_many_tags`` (middlewares.tags). 1,000,000 keeps a parsed page under ~180 MB; a spider
# raises it in custom_settings, 0 switches the check off.
FLEET_MAX_PAGE_TAGS = 1_000_000

# The stall watchdog (scraper.worker.watchdog): a leased request with no progress for longer than its download
# timeout plus this many seconds is settled as class A ``watchdog:stalled`` and its fetch cancelled.
# Negative: off.
FLEET_WATCHDOG_MARGIN = 30.0

# Hedged fetches (scraper.worker.hedge), off: a spider sets FLEET_HEDGE = True in its custom_settings to send
# a GET/HEAD that has not answered after its domain's p95 latency (never sooner than FLEET_HEDGE_MIN_DELAY
# seconds) a second time, through another proxy with FLEET_PROXIES; the first answer wins. FLEET_HEDGE_RATE
# bounds hedges to that share of requests per worker (0.05: at most 5 %).
FLEET_HEDGE = False
FLEET_HEDGE_RATE = 0.05
FLEET_HEDGE_MIN_DELAY = 0.05

# Every failure that leaves the downloader-middleware chain for an unsettled lease is settled
# (scraper.worker.settle): Scrapy drops some (redirect limits, decompression errors) where no errback sees them.
DOWNLOADER = "scraper.worker.settle.FleetDownloader"
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
LOGSTATS_INTERVAL = 0
ROBOTSTXT_OBEY = False
REQUEST_FINGERPRINTER_IMPLEMENTATION = "2.7"

# Scrapy's HTTP/1.1 handler with Twisted's in-process automatic retry of reset keep-alive connections
# switched off (scraper.worker.download): every attempt is a delivery from Redis, counted in its A budget.
# Scrapy's handlers for the other schemes are off: a crawled page's file:// link must not read the
# worker's files, nor an s3:// one use its credentials. FLEET_SCHEMES switches them back on by name
# (scraper.worker.catalog.base_settings); middlewares.schemes refuses such URLs before any handler is asked.
DOWNLOAD_HANDLERS = {
    "http": "scraper.worker.download.FleetHTTPDownloadHandler",
    "https": "scraper.worker.download.FleetHTTPDownloadHandler",
    "file": None,
    "ftp": None,
    "s3": None,
    "data": None,
}

# Retries are data in Redis (DELAYED zset), not sleeps inside one process: Scrapy's own retry
# middleware would burn budget invisibly and hold a concurrency slot while waiting.
RETRY_ENABLED = False

# Non-2xx responses reach our classifier instead of being filtered before it sees them.
HTTPERROR_ALLOW_ALL = True

SPIDER_MIDDLEWARES = {
    # Outermost on the output path (lowest order = last to see the callback's output), so it sees
    # exactly what reaches the engine after every other middleware filtered it.
    "middlewares.commit.CommitMiddleware": 1,
}

DOWNLOADER_MIDDLEWARES = {
    # Outermost on the way out: a URL whose scheme FLEET_SCHEMES does not allow (file://, ftp://…) or
    # that has no host is never fetched, whatever put it there (a seed, a queue entry, a redirect).
    "middlewares.schemes.SchemeMiddleware": 40,
    # FLEET_ALLOW_PRIVATE=0: first on the way out, so no other middleware (nor a redirect) reaches a
    # non-public address; off by default (NotConfigured)
    "middlewares.private.PrivateAddressMiddleware": 50,
    # ROBOTSTXT_OBEY: robots.txt fetched once for the fleet and shared through Redis; a disallowed request is
    # class D policy:robots in the DLQ; Crawl-delay spaces the worker's slot (middlewares.robots)
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "middlewares.robots.FleetRobotsMiddleware": 100,
    # Chooses a healthy proxy for the target domain; Scrapy's HttpProxyMiddleware (750) applies it.
    "middlewares.proxy.ProxyMiddleware": 740,
    # Closest to the downloader: classifies raw responses and exceptions before anything else.
    "middlewares.classify.ClassifyMiddleware": 950,
    # Scrapy's decoding, with the size limit as a typed class D outcome, below the classifier so that it
    # sees decoded bodies (middlewares.decompress)
    "scrapy.downloadermiddlewares.httpcompression.HttpCompressionMiddleware": None,
    "middlewares.decompress.DecompressMiddleware": 960,
    # a decoded page with more tags than FLEET_MAX_PAGE_TAGS is refused before a callback parses it (middlewares.tags)
    "middlewares.tags.TagLimitMiddleware": 955,
    # Scrapy's redirects, with loops and REDIRECT_MAX_TIMES as class D redirect:loop / redirect:too_many
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "middlewares.redirect.FleetRedirectMiddleware": 600,
    "scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware": None,
    "middlewares.redirect.FleetMetaRefreshMiddleware": 580,
    # a 3xx neither of those followed (a Location to file:, none at all): refused, never the page
    "middlewares.redirect.UnfollowedRedirectMiddleware": 570,
}

# The object write is the last item pipeline: pipelines.objects.ObjectPipeline, at 1000, hands each item,
# as the pipelines before it left it, to its request; the runtime writes the request's one object once
# every item of it is through (scraper.worker.finisher, scraper.worker.sinks) and acks only once durable.
# A spider's own pipelines go below 1000 in its custom_settings (merged with this dict, never replacing
# it: scraper.worker.catalog.item_pipelines); one at or above 1000 moves ObjectPipeline after it. Setting
# ObjectPipeline to None, or placing it before a pipeline of the spider's, is refused at start-up (exit 1).
ITEM_PIPELINES = {
    "pipelines.objects.ObjectPipeline": 1000,
}
# Scrapy's pipeline manager, plus the one thing ObjectPipeline needs to find an item's request: the
# object the callback yielded (a user pipeline may return another). Always Fleet's.
ITEM_PROCESSOR = "pipelines.objects.FleetItemProcessor"

EXTENSIONS = {
    "scrapy.extensions.telnet.TelnetConsole": None,
    # an HTTP control port per worker is an attack surface a fleet does not need
    "scrapy.extensions.remote_control.RemoteControl": None,
    "scraper.worker.watchdog.Watchdog": 500,
    # Prometheus metrics of this worker, only with FLEET_METRICS_PORT (NotConfigured otherwise)
    "scraper.worker.exporter.WorkerMetrics": 510,
}

# The failure taxonomy (scraper.policy.taxonomy, applied by middlewares.classify; docs/architecture.md, "Failure
# taxonomy and budgets").
# Unset: the defaults below. Lists of status codes replace the defaults; FLEET_EXTRA_BLOCK_MARKERS
# adds regexes (searched in the first 64 KiB of 2xx bodies) that mark a page as a block/challenge
# page (class B) before any drift check.
# FLEET_TRANSIENT_STATUS = [408, 500, 502, 503, 504, 520, 521, 522, 523, 524]   # class A
# FLEET_BAN_STATUS = [403, 407, 429]                                             # class B
# FLEET_HARD_STATUS = [400, 401, 404, 405, 410, 451, 501, 505]                          # class D
FLEET_EXTRA_BLOCK_MARKERS: list[str] = []

LOG_LEVEL = "INFO"

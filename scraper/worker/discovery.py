"""Discovery: a child request the callback yielded becomes an envelope in its parent's ledger, or is
refused where it is found (scheme, allowed_domains, an envelope that cannot be built).

Why where it is found: a queued request is always fetched (``dont_filter``), so Scrapy's own offsite
check would never see it again; and a refused link must never reach Redis.
"""

from __future__ import annotations

from typing import Any

from scrapy import Request, Spider
from scrapy.utils.httpobj import urlparse_cached

from scraper.infra.config import FleetConfig
from scraper.infra.redact import redact_request_url
from scraper.policy.urls import refusal
from scraper.queue.client import new_id
from scraper.queue.entrycheck import EnvelopeError
from scraper.queue.envelope import Envelope
from scraper.queue.startfp import mark_unfiltered, start_fp
from scraper.worker.adapter import Offsite
from scraper.worker.catalog import NO_DEDUP
from scraper.worker.ledger import LeaseState, Ledger, reusable

__all__ = ["Discovery"]


class Discovery:
    def __init__(self, config: FleetConfig, ledger: Ledger, stats: Any, log: Any) -> None:
        self.config = config
        self.ledger = ledger
        self.stats = stats
        self.log = log
        self.spider: Spider | None = None  # set when the spider opens
        self.offsite: Offsite | None = None  # the spider's allowed_domains, if it declares any
        self._no_dedup: bool | None = None  # no_dedup, read once the spider is open

    def no_dedup(self) -> bool:
        """Whether the spider's DUPEFILTER_CLASS filters nothing (scraper.worker.catalog.NO_DEDUP): then, as in
        Scrapy, every request it yields is fetched, however often its URL was (each one ``dont_filter``)."""
        if self._no_dedup is None:
            crawler = getattr(self.spider, "crawler", None)
            self._no_dedup = bool(crawler is not None and crawler.settings.getbool(NO_DEDUP))
        return self._no_dedup

    def off_site(self, request: Request, dont_filter: bool) -> bool:
        """The spider's allowed_domains refuse ``request`` (counted); ``dont_filter`` and meta
        ``allow_offsite`` exempt it, as in Scrapy's offsite middleware."""
        if self.offsite is None or dont_filter or request.meta.get("allow_offsite") \
                or not self.offsite.refuses(request):
            return False
        self.stats.inc_value("fleet/offsite_filtered")
        return True

    def found(self, state: LeaseState, request: Request) -> None:
        refused = refusal(request.url, self.config.schemes)
        if refused is not None:
            # a link to file://, ftp://, javascript:… or one without a host: never queued, never retried
            # (middlewares.schemes refuses it again before any download)
            self.stats.inc_value("fleet/discovered_refused")
            self.log.info("request_refused", parent=state.env.fp, reason=refused.reason, detail=str(refused))
            return
        if self.off_site(request, request.dont_filter):
            # the spider's allowed_domains, applied where the request is found: a queued request is
            # always fetched (dont_filter), so Scrapy's offsite check would never see it again
            self.log.info("request_offsite", parent=state.env.fp, host=urlparse_cached(request).hostname)
            return
        try:
            env = Envelope.from_request(request, spider_name=state.env.spider, run=state.env.run, spider=self.spider)
        except EnvelopeError as exc:
            self.stats.inc_value("fleet/discovered_rejected")
            self.log.error("request_rejected", reason=str(exc), parent=state.env.fp,
                           url=redact_request_url(request.url)[:300])
            return
        env.parent = state.env.fp
        out = state.out
        if self.no_dedup():
            # the spider turned duplicate filtering off (DUPEFILTER_CLASS: BaseDupeFilter): every request it yields
            # is its own, even one identical to another page's (told apart by its page and its place there: a
            # redelivered page yields the same ones again, which stay one each)
            env.dont_filter = True
            env.fp = start_fp(env, salt=f"{state.env.fp}#{len(out.discovered)}")
        else:
            mark_unfiltered(env)  # a dont_filter request is fetched even for a URL already DONE (startfp)
        cid = new_id(env.fp)  # its shard's (scraper.queue.keys.new_id)
        out.discovered.append(env)
        out.discovered_ids.append(cid)
        if reusable(request, env):
            # what env.to_request would build, to the letter: if this worker leases the child itself
            # (READY is LIFO, it mostly does), this very Request is used instead of the envelope's JSON
            request.dont_filter = True  # as to_request: dedup is SEEN/DONE's job
            self.ledger.remember_child(cid, env, request)

"""Redirects inside a lease: the checks Scrapy's scheduler makes of a redirect, made against the fleet.

Why here and not in Scrapy's scheduler: every queued request is fetched with ``dont_filter=True`` (SEEN
and DONE deduplicate, not the in-process dupefilter), and a redirect copies that flag, so Scrapy's own
checks of the redirected request would pass everything. The envelope keeps the spider's own
``dont_filter``, and with it these two checks are made as plain Scrapy makes them:

* **allowed_domains**: a redirect off the spider's domains is ignored (Scrapy's offsite check);
* **the dupefilter**: a redirect hop whose fingerprint (the plain one a discovered request gets) is
  already SEEN in the run is ignored: the request is acknowledged with no object, counted as
  ``fleet/redirect_filtered`` and logged as ``redirect_filtered``. A site that links both ``/docs`` and
  ``/docs/`` (which ``/docs`` redirects to) gives one item, as under Scrapy.

A hop that passes is remembered on the request's ledger (``Fetch.hops``) and recorded in SEEN (and DONE)
by the request's own COMMITs (lua/commit.lua): the one that queues its children (a child may link back to
the page the redirect landed on) and the one that records its DONE. So a later link to the redirect's
target is dropped, as in Scrapy. The children COMMIT comes before the request's objects are durable, so
only a request's first delivery checks its hops: a redelivery (its worker died, its write failed, it was
released at shutdown) may find its own hops SEEN, and follows them; a lost request is never dropped as
seen; and a first delivery that lost its lease meanwhile acknowledges strictly (``Committer.ack_only``): it
records nothing, so a hop its own redelivery recorded cannot make it mark the request DONE. The check reads
Redis and writes nothing; if Redis does not answer, the redirect is followed (a
duplicate page is better than a lost one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.httpobj import urlparse_cached

from scraper.queue.fingerprint import fp64
from scraper.worker.discovery import Discovery
from scraper.worker.health import REDIS_ERRORS
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.queueport import QueuePort

__all__ = ["Redirects"]

Follow = Callable[[LeaseState, Request], None]


class Redirects:
    def __init__(self, ledger: Ledger, discovery: Discovery, *, ignored: Callable[[LeaseState, BaseException], None],
                 spawn: Callable[[Any], None], kick: Callable[[], None], stats: Any, log: Any) -> None:
        self.ledger = ledger
        self.discovery = discovery
        self.ignored = ignored  # the runtime's: acknowledge the request, no object
        self.spawn = spawn
        self.kick = kick
        self.stats = stats
        self.log = log
        self.queue: QueuePort | None = None  # set when the spider opens

    def continued(self, state: LeaseState, request: Request, follow: Follow) -> bool:
        """``request`` continues ``state``'s lease (a redirect, a meta refresh). False: it was ignored at
        once (offsite). True: ``follow(state, request)`` is called now, or after the SEEN check, unless
        the check finds the target SEEN (then the request is settled as ignored)."""
        env = state.env
        if self.discovery.off_site(request, env.dont_filter):
            self.ignored(state, IgnoreRequest(f"offsite redirect to {urlparse_cached(request).hostname}"))
            return False
        if env.dont_filter or "redirect_urls" not in request.meta or self.queue is None:
            follow(state, request)  # dont_filter: Scrapy neither checks nor records it; or not a redirect
            return True
        fp = fp64(request, self.discovery.spider)  # the spider's own fingerprinter, as its children's
        if fp != env.fp and state.lease.deliveries == 1:
            self.spawn(self._check(state, request, fp, follow))
            return True
        if fp != env.fp:
            state.fetch.hops.append(fp)  # a redelivery: recorded, not checked (see above)
        follow(state, request)
        return True

    async def _check(self, state: LeaseState, request: Request, fp: str, follow: Follow) -> None:
        assert self.queue is not None
        env = state.env
        try:
            seen = (await self.queue.seen(env.run, [fp]))[0]
        except REDIS_ERRORS as exc:
            self.log.warning("redirect_check_failed", run=env.run, fp=env.fp, error=type(exc).__name__)
            seen = False
        if state.settled or not self.ledger.is_live(state):  # the watchdog or a shutdown settled it meanwhile
            return
        if seen:
            self.stats.inc_value("fleet/redirect_filtered")
            self.log.info("redirect_filtered", run=env.run, fp=env.fp, target=fp,
                          hops=len(request.meta["redirect_urls"]))
            self.ignored(state, IgnoreRequest(f"redirect to a URL already seen in the run (fp {fp})"))
            return
        state.fetch.hops.append(fp)
        follow(state, request)
        self.kick()

"""The fingerprint of a spider's start request: Scrapy's ``dont_filter`` semantics in Fleet's SEEN/DONE.

Why a namespace of its own: plain Scrapy never records a ``dont_filter=True`` request (``start_urls``
makes every start request one) in its dupefilter, so when a crawled page links back to the start URL,
that link is fetched and parsed by its own callback (a CrawlSpider rule's, say): issue #19, the start
page's item was missing under Fleet. Recording the start request under its plain fingerprint would mark
the URL SEEN for every request discovered later. Under this fingerprint a start request and a
discovered request for the same URL are different work (different SEEN/DONE members, different object
keys), while seeding the same start request twice in a run still finds it SEEN: the fingerprint is a
pure function of the request, so re-seeding a run stays idempotent.

Only ``dont_filter=True`` start requests get it (a start request without it is recorded under its plain
fingerprint, as Scrapy's dupefilter records it). What identifies a start request: its Scrapy
fingerprint (method, URL, body) plus what a discovered request would differ by, its callback and
errback names, ``cb_kwargs`` and the JSON ``meta`` the envelope keeps (two start requests for one
login URL with different ``meta["cookiejar"]`` are two sessions, as in Scrapy).
"""

from __future__ import annotations

import hashlib
import json

from scraper.queue.envelope import Envelope

__all__ = ["START_TAG", "mark_start", "mark_unfiltered", "start_fp"]

# Part of the hashed text: no plain fingerprint (a SHA1 of Scrapy's JSON request description) hashes
# text that begins with it.
START_TAG = "fleet-start-v1"


def start_fp(env: Envelope, salt: str = "") -> str:
    """The start-request fingerprint of ``env`` (16 lowercase hex digits, like ``fp64``). ``salt``: what else
    tells this request from an identical one (a discovered request's place among its page's requests, a
    request an idle handler queued: ``Discovery.found``, ``FleetScheduler``). Scrapy's StartSpiderMiddleware's
    ``is_start_request`` is left out: seeding sets it since 2026-12-08, and a run re-seeded across that upgrade
    must find its start requests SEEN."""
    meta = env.meta if "is_start_request" not in env.meta else {
        k: v for k, v in env.meta.items() if k != "is_start_request"}
    parts = [START_TAG, env.fp, env.callback, env.errback, env.cb_kwargs, meta, *([salt] if salt else [])]
    # through JSON first: meta may mix int and str keys (JSON makes them all text), which sort_keys refuses
    ident = json.dumps(json.loads(json.dumps(parts, allow_nan=False)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(ident.encode("utf-8")).hexdigest()[:16]


def mark_start(env: Envelope) -> Envelope:
    """Give a ``dont_filter`` start request its start fingerprint (in place); others keep their own."""
    if env.dont_filter:
        env.fp = start_fp(env)
    return env


def mark_unfiltered(env: Envelope) -> Envelope:
    """A discovered ``dont_filter`` request gets the same kind of fingerprint (in place).

    Why: plain Scrapy fetches every ``dont_filter`` request, even for a URL it fetched before. Under its
    plain fingerprint such a request was dropped at lease time once that URL was DONE (and would have
    overwritten the same object), so two ``dont_filter`` requests for one URL with different
    ``cb_kwargs`` became one. Exactly identical ones (URL, method, body, callback, errback, cb_kwargs,
    meta) are still one request: what makes a redelivery or a retried commit safe."""
    return mark_start(env)

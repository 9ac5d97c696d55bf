"""Responses Fleet refuses for a known reason: typed, so the taxonomy classifies them without reading messages.

Why typed exceptions: Scrapy drops these requests with a bare ``IgnoreRequest`` (too many redirects, a
decompressed body over DOWNLOAD_MAXSIZE) or lets a decoder's own error escape (a corrupt gzip body), and
neither reaches an errback Fleet sees; the request then stayed leased forever. Fleet's redirect and
decompression middlewares and its download handler raise these instead, and ``classify_exception``
turns each into class D with its reason and a one-line ``detail`` (sizes, encoding, hops: never the URL,
which the DLQ entry carries anyway, never a header value).

They subclass ``IgnoreRequest``: outside a worker (no lease to settle) Scrapy drops them quietly, as it
did before. They live in scraper, not middlewares/: the download handler (scraper.worker.download) raises one and
the catch-all (scraper.worker.settle) settles them, and scraper never imports middlewares.
"""

from __future__ import annotations

from typing import Any

from scrapy.exceptions import IgnoreRequest

__all__ = [
    "BadRedirect",
    "BodyTooLarge",
    "BodyUndecodable",
    "RedirectLoop",
    "RedirectScheme",
    "Refused",
    "RobotsDisallowed",
    "TooManyRedirects",
    "TooManyTags",
    "UnhandledRedirect",
]


class Refused(IgnoreRequest):
    """A response refused for ``reason`` (class D); ``detail`` is the evidence, ``response`` (if any)
    the response as received (its status and headers go to the DLQ entry)."""

    reason = "refused"

    def __init__(self, detail: str, response: Any = None, *, classified: bool = True) -> None:
        super().__init__(f"{self.reason} {detail}")
        self.detail = detail
        self.response = response
        # False: raised below the classifier (middlewares.decompress), which never saw this response, so
        # the settling code records the fetch itself (proxy in-flight count, request_fetched log)
        self.classified = classified


class BodyTooLarge(Refused):
    """The body (on the wire, or once decoded) is larger than DOWNLOAD_MAXSIZE."""

    reason = "body:too_large"


class TooManyTags(Refused):
    """The decoded body has more tags (``<`` characters: an upper bound) than FLEET_MAX_PAGE_TAGS: parsing it
    would take a worker's memory (middlewares.tags)."""

    reason = "body:too_many_tags"


class BodyUndecodable(Refused):
    """The body cannot be decoded from its Content-Encoding (corrupt gzip, deflate, br or zstd data)."""

    reason = "body:undecodable"


class RedirectLoop(Refused):
    """A redirect leads back to a URL already visited in this redirect chain."""

    reason = "redirect:loop"


class BadRedirect(Refused):
    """A 3xx whose Location (or a meta refresh URL) is not a URL Scrapy can build a request from."""

    reason = "redirect:bad_location"


class RedirectScheme(Refused):
    """A 3xx to a URL of a scheme no worker fetches (``file:``, ``ftp:``, ``data:``...): Scrapy leaves such a
    redirect unfollowed and hands the 3xx itself on, which was then stored as the page. The same reason as
    any other URL of such a scheme (middlewares.schemes): D ``policy:scheme``, unfetched."""

    reason = "policy:scheme"


class UnhandledRedirect(Refused):
    """A 3xx no redirect middleware followed (``dont_redirect``, REDIRECT_ENABLED=False, a status Scrapy does not
    follow) and the spider does not handle (``handle_httpstatus_list``, HTTPERROR_ALLOWED_CODES): Scrapy's
    HttpErrorMiddleware drops it unparsed; here D ``http:<status>``, as an unhandled 4xx."""

    reason = "http:3xx"

    def __init__(self, status: int, detail: str, response: Any = None) -> None:
        self.reason = f"http:{status}"
        super().__init__(detail, response)


class TooManyRedirects(Refused):
    """The redirect chain is longer than REDIRECT_MAX_TIMES."""

    reason = "redirect:too_many"


class RobotsDisallowed(Refused):
    """With ROBOTSTXT_OBEY on, the site's robots.txt disallows the URL for the spider's user agent
    (middlewares.robots); ``detail`` names the file's version (status, size, hash, fetch time)."""

    reason = "policy:robots"

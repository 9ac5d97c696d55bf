"""Downloader middleware: Content-Encoding decoding with a hard size limit, and a typed outcome when it fails.

Why not Scrapy's HttpCompressionMiddleware as it is: it decodes in 64 KiB steps and stops once the output
passes DOWNLOAD_MAXSIZE (good: a 1.4 KB brotli bomb never grows past the limit), but it then raises a
bare ``IgnoreRequest``, and a corrupt body escapes as the decoder's own error (``zlib.error``,
``BadGzipFile``, ``brotli.error``, ``ZstdError``). Both leave ``process_response`` where no Fleet code
sees them, so the request stayed leased forever. This subclass keeps Scrapy's decoders (gzip, x-gzip,
deflate, br, zstd; brotli and backports-zstd are Scrapy dependencies) and raises
:class:`~scraper.policy.refused.BodyTooLarge` or :class:`~scraper.policy.refused.BodyUndecodable` instead:
class D with the encoding and the sizes as evidence.

It sits at 960, next to the downloader (Scrapy's sits at 590): the classifier (950) and everything after
it see the decoded body, so block markers are searched in the page's text, not in gzip bytes, and the
raw snapshot is the page itself. A redirect's body is never decoded (nobody reads it).

The limit is the request's ``download_maxsize`` meta or DOWNLOAD_MAXSIZE (settings: 32 MiB by default,
overridable per spider); the compressed body itself was already bounded by the download handler.
"""

from __future__ import annotations

import codecs

from scrapy import Request, Spider
from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response, TextResponse
from scrapy.http.request import NO_CALLBACK
from w3lib.encoding import html_body_declared_encoding, http_content_type_encoding, read_bom

from middlewares.redirect import to_follow
from scraper.policy.refused import BodyTooLarge, BodyUndecodable, Refused

__all__ = ["DecompressMiddleware"]

# text codecs that decode no web page: IDNA and punycode encode host names, and raise on a page's bytes
_NOT_FOR_PAGES = frozenset({"idna", "punycode", "undefined"})  # "undefined" raises on any use



def _encoding(response: Response) -> str:
    """The Content-Encoding as sent (its tokens, lowercased, at most 60 characters)."""
    raw = b",".join(response.headers.getlist("Content-Encoding"))
    return raw.decode("latin-1").replace(" ", "").lower()[:60] or "identity"


def _charset_problem(response: Request | Response) -> str | None:
    """Why a text response's charset cannot decode it (None when it can). Why: a page may declare any codec
    Python knows, in its Content-Type or a <meta charset>: ``rot13``, ``hex``, ``base64``, ``zlib`` are not
    text encodings and ``idna`` fails on any page, so every ``response.text`` raised (``LookupError``,
    ``UnicodeError``): retried as A ``error:LookupError`` until the budget was spent, or, when the meta-refresh
    check read it first, called a bad redirect. It is the page's own declaration: D ``body:undecodable``."""
    if not isinstance(response, TextResponse):
        return None
    # the declaration Scrapy would decode with (a BOM, else the Content-Type's charset, else one in the body),
    # read with w3lib's functions as Scrapy reads it; what Scrapy infers when nothing is declared is always a
    # text codec, and inferring it here would decode the whole body for callbacks that never read the text
    body = response.body
    if read_bom(body)[0]:
        return None
    try:
        ctype = (response.headers.get(b"Content-Type") or b"").decode("latin-1")
        name = http_content_type_encoding(ctype) or html_body_declared_encoding(body)
        if not name:
            return None
        info = codecs.lookup(name)
    except (LookupError, ValueError) as exc:  # UnicodeError is a ValueError
        return f"charset: {type(exc).__name__}: {str(exc)[:120]}"
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_FOR_PAGES:
        return f"charset={info.name} cannot decode a page"
    return None


class DecompressMiddleware(HttpCompressionMiddleware):
    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        if to_follow(response):
            return response  # followed, never read: decoding it could only fail
        failure: type[Refused] = BodyUndecodable
        detail = ""
        try:
            out = super().process_response(request, response)
            # a page's own: not a ban or an outage answer (the taxonomy classifies those by status), nor
            # Fleet's robots.txt fetch (NO_CALLBACK: its parser reads the bytes)
            page = isinstance(out, Response) and 200 <= out.status < 300 and request.callback is not NO_CALLBACK
            bad = _charset_problem(out) if page else None
            if bad is None or not isinstance(out, Response):
                return out
            response, detail = out, bad  # the refusal carries the decoded page
        except IgnoreRequest as exc:  # Scrapy's "exceeded DOWNLOAD_MAXSIZE during decompression"
            # only numbers are kept: a local bound to the cause (whose traceback's frames hold the partly
            # decoded output) would live on in this frame, in the traceback of the exception raised below,
            # and pin up to DOWNLOAD_MAXSIZE per refused bomb until a full garbage collection
            limit = int(getattr(exc.__cause__, "max_size", 0) or self._max_size)
            decoded = int(getattr(exc.__cause__, "decompressed_size", limit))
            failure = BodyTooLarge
            detail = (f"encoding={_encoding(response)} compressed={len(response.body)} "
                      f"decompressed>{decoded} limit={limit} stage=decode")
        except Exception as exc:  # the decoder's own error: the body is not what its encoding says
            detail = (f"encoding={_encoding(response)} compressed={len(response.body)} "
                      f"error={type(exc).__name__}: {str(exc)[:120]}")
        # raised outside the except blocks: the decoder's exception (and its traceback, whose frames hold
        # the partly decoded output) is not chained to this one and is freed here
        raise failure(detail, response, classified=False)

"""scrapy-playwright's ``meta["playwright_page_methods"]`` carried through the queue as JSON.

Why: a ``PageMethod`` is an object, so the envelope's JSON-only meta dropped it, and a spider that waits for
its content (``PageMethod("wait_for_selector", "h1")``) had its pages captured before their JavaScript ran:
every page looked like drift (class C), the breaker opened, and the cause was Fleet, not the site. A page
method is only a name, arguments and options, so it is queued as ``{"$pagemethod": [name, args, kwargs]}``
and rebuilt when the entry becomes a Request again.

Why an allow-list: a queue entry is input (anyone who can write the spider's queue writes it), and some
page methods reach outside the page: ``screenshot`` and ``pdf`` write a local file at a ``path``,
``set_input_files`` reads local files into a form, ``goto`` navigates where Fleet's scheme and address
checks never look, ``route`` and ``expose_function`` change the browser itself. Only methods that wait for
or act on the page in front of them travel; a page method that is not on the list, that is a callable, or
whose arguments are not JSON, is left out when the request is queued, as any other non-JSON meta is.
"""

from __future__ import annotations

import json
from typing import Any

from scraper.queue.entrycheck import EnvelopeError

__all__ = ["KEY", "METHODS", "decode", "encode"]

KEY = "playwright_page_methods"
_TAG = "$pagemethod"

#: page methods that may travel in a queued request: they wait for, read or act on the loaded page only
METHODS = frozenset({
    "wait_for_selector", "wait_for_load_state", "wait_for_timeout", "wait_for_function", "wait_for_url",
    "evaluate", "click", "dblclick", "hover", "focus", "fill", "type", "press", "check", "uncheck",
    "select_option", "set_viewport_size", "bring_to_front",
})


def _one(pm: Any) -> Any | None:
    method = getattr(pm, "method", None)
    args, kwargs = getattr(pm, "args", None), getattr(pm, "kwargs", None)
    if type(method) is not str or method not in METHODS or not isinstance(args, tuple) \
            or not isinstance(kwargs, dict):
        return None
    out = {_TAG: [method, list(args), kwargs]}
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return out


def encode(value: Any) -> Any | None:
    """The JSON form of a ``playwright_page_methods`` value (a list of PageMethods, or a dict of them by
    name, as scrapy-playwright takes both), or None when any of them cannot travel (see the module)."""
    if isinstance(value, (list, tuple)):
        items = [_one(pm) for pm in value]
        return None if any(i is None for i in items) else items
    if isinstance(value, dict):
        named = {k: _one(pm) for k, pm in value.items()}
        return None if any(type(k) is not str or v is None for k, v in named.items()) else named
    return None


def _back(item: Any) -> Any:
    from scrapy_playwright.page import PageMethod

    spec = item.get(_TAG) if isinstance(item, dict) and len(item) == 1 else None
    if not (isinstance(spec, list) and len(spec) == 3):
        raise EnvelopeError(f"meta {KEY!r}: not a page method")
    method, args, kwargs = spec
    if type(method) is not str or method not in METHODS:
        raise EnvelopeError(f"meta {KEY!r}: page method {str(method)[:40]!r} may not be queued")
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(type(k) is str for k in kwargs):
        raise EnvelopeError(f"meta {KEY!r}: malformed arguments of {method!r}")
    return PageMethod(method, *args, **kwargs)


def decode(value: Any) -> Any:
    """PageMethods again from :func:`encode`'s form, or :class:`EnvelopeError` (a hostile or broken entry,
    which goes to the DLQ as ``bad_envelope``)."""
    if isinstance(value, list):
        return [_back(i) for i in value]
    if isinstance(value, dict):
        return {k: _back(v) for k, v in value.items()}
    raise EnvelopeError(f"meta {KEY!r} must be a list or an object of page methods")

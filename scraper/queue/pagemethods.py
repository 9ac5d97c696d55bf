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
or act on the page in front of them travel (``screenshot`` and ``pdf`` too, without a ``path``: their bytes
land in the method's ``result``); a page method that is not on the list, that is a callable, or whose
arguments are not JSON, is left out when the request is queued (the others of the list travel). A wait
cannot hold a browser page for ever: a ``timeout`` (0 is "none" to Playwright) and ``wait_for_timeout``'s
milliseconds are clamped to ``MAX_WAIT_MS``. ``evaluate`` and ``wait_for_function`` run the entry's
JavaScript in the page, which can do what the page's own scripts can (fetch, navigate): egress rules on the
workers are the defence there, as for rendered pages in general (SECURITY.md).

``playwright_page_goto_kwargs`` (scrapy-playwright passes them to ``page.goto``) keep only ``wait_until``,
``referer`` and a clamped ``timeout`` (:func:`goto_kwargs`).
"""

from __future__ import annotations

import json
from typing import Any

from scraper.queue.entrycheck import EnvelopeError

__all__ = ["GOTO_KEY", "KEY", "MAX_WAIT_MS", "METHODS", "decode", "encode", "goto_kwargs", "shown"]

KEY = "playwright_page_methods"
GOTO_KEY = "playwright_page_goto_kwargs"
#: the longest a queued wait may hold a browser page (ms): a timeout of 0 (none), or longer, becomes this
MAX_WAIT_MS = 120_000
_TAG = "$pagemethod"

#: page methods that may travel in a queued request: they wait for, read or act on the loaded page only
METHODS = frozenset({
    "wait_for_selector", "wait_for_load_state", "wait_for_timeout", "wait_for_function", "wait_for_url",
    "evaluate", "click", "dblclick", "hover", "focus", "fill", "type", "press", "check", "uncheck",
    "select_option", "set_viewport_size", "bring_to_front",
    "screenshot", "pdf",  # without a path (_PATHLESS): the bytes come back in the method's result
})
_PATHLESS = frozenset({"screenshot", "pdf"})
_GOTO_WAITS = frozenset({"load", "domcontentloaded", "networkidle", "commit"})


def _wait_ms(value: Any) -> Any:
    """A timeout in ms, clamped to (0, MAX_WAIT_MS]; 0, negative or not a number: MAX_WAIT_MS."""
    if type(value) not in (int, float) or not 0 < value <= MAX_WAIT_MS:
        return MAX_WAIT_MS
    return value


def _allowed(method: Any, kwargs: Any) -> bool:
    return (type(method) is str and method in METHODS and isinstance(kwargs, dict)
            and "method" not in kwargs and not (method in _PATHLESS and "path" in kwargs))


def _one(pm: Any) -> Any | None:
    method = getattr(pm, "method", None)
    args, kwargs = getattr(pm, "args", None), getattr(pm, "kwargs", None)
    if not (_allowed(method, kwargs) and isinstance(args, tuple)):
        return None
    out = {_TAG: [method, list(args), kwargs]}
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return out


def encode(value: Any) -> Any | None:
    """The JSON form of a ``playwright_page_methods`` value (a list of PageMethods, or a dict of them by
    name, as scrapy-playwright takes both), without the methods that cannot travel (see the module); None
    when nothing is left to queue."""
    if isinstance(value, (list, tuple)):
        items = [i for i in (_one(pm) for pm in value) if i is not None]
        return items or None
    if isinstance(value, dict):
        named = {k: v for k, v in ((k, _one(pm)) for k, pm in value.items()) if type(k) is str and v is not None}
        return named or None
    return None


def _back(item: Any) -> Any:
    from scrapy_playwright.page import PageMethod

    spec = item.get(_TAG) if isinstance(item, dict) and len(item) == 1 else None
    if not (isinstance(spec, list) and len(spec) == 3):
        raise EnvelopeError(f"meta {KEY!r}: not a page method")
    method, args, kwargs = spec
    if not _allowed(method, kwargs):
        raise EnvelopeError(f"meta {KEY!r}: page method {str(method)[:40]!r} may not be queued like this")
    if not isinstance(args, list) or not all(type(k) is str for k in kwargs):
        raise EnvelopeError(f"meta {KEY!r}: malformed arguments of {method!r}")
    if "timeout" in kwargs:
        kwargs = {**kwargs, "timeout": _wait_ms(kwargs["timeout"])}
    if method == "wait_for_timeout":
        args = [_wait_ms(args[0] if args else None)]
    try:
        return PageMethod(method, *args, **kwargs)
    except TypeError as exc:  # PageMethod's own signature refused them
        raise EnvelopeError(f"meta {KEY!r}: malformed arguments of {method!r}: {exc}"[:200]) from None


def decode(value: Any) -> Any:
    """PageMethods again from :func:`encode`'s form, or :class:`EnvelopeError` (a hostile or broken entry,
    which goes to the DLQ as ``bad_envelope``)."""
    if value is None:  # an entry queued before page methods travelled: scrapy-playwright reads it as none
        return []
    if isinstance(value, list):
        return [_back(i) for i in value]
    if isinstance(value, dict):
        return {k: _back(v) for k, v in value.items()}
    raise EnvelopeError(f"meta {KEY!r} must be a list or an object of page methods")


def goto_kwargs(value: Any) -> dict[str, Any]:
    """``playwright_page_goto_kwargs`` of an entry, with only what ``page.goto`` may take from input:
    ``wait_until`` (one of Playwright's four), ``referer`` and a clamped ``timeout``."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    if value.get("wait_until") in _GOTO_WAITS:
        out["wait_until"] = value["wait_until"]
    if type(value.get("referer")) is str:
        out["referer"] = value["referer"][:2000]
    if "timeout" in value:
        out["timeout"] = _wait_ms(value["timeout"])
    return out


def shown(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` fit for evidence: its queued page methods by name only. Why: their arguments are what the
    spider typed into the page (``fill("#password", ...)``), which no evidence object needs (``fleet replay``
    parses the stored body; it never drives a browser)."""
    value = meta.get(KEY)
    if value is None:
        return meta

    def name(item: Any) -> str:
        spec = item.get(_TAG) if isinstance(item, dict) else None
        return str(spec[0])[:40] if isinstance(spec, list) and spec else "?"

    names: Any = [name(i) for i in value] if isinstance(value, list) else \
        {str(k): name(v) for k, v in value.items()} if isinstance(value, dict) else "?"
    return {**meta, KEY: names}

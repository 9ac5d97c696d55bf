"""Secrets out of text: credentials in URLs and secret-bearing field names, for logs, errors and displays.

Why one module: proxy and Redis URLs carry passwords, and they reach log lines (``scraper.infra.log``
scrubs every event with :func:`redact` and :data:`SECRET_KEYS`), one-line errors and the CLI's displays
(:func:`redact_url`). One place decides what counts as a secret, so the rules cannot drift apart.
"""

from __future__ import annotations

import re

__all__ = [
    "SECRET_KEYS",
    "redact",
    "redact_data",
    "redact_request_url",
    "redact_setting",
    "redact_url",
    "secret_setting",
]

#: Field (and header) names whose values never print.
SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "password", "token"})
# userinfo: ``user:password@`` (the password may hold an unencoded '/' or '@': ``redis://u:p/w@h``,
# ``redis://u:p@ss@h``; a password runs to the last '@' of the URL, so a '@' in a path after a password
# (``http://u:p@h/a@b``) hides the host too: over-redacting a log line costs less than printing a password)
# or ``user@``. A scheme starts after a non-scheme character and lengths are bounded, so a long line with
# many '@' or '://' is scanned in linear time.
_USERINFO = re.compile(
    r"(?<![a-zA-Z0-9+.\-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://)"
    r"(?P<userinfo>[^@/\s:]{0,2048}:(?:[^@\s]{0,2048}@){0,8}[^@\s]{0,2048}|[^@/\s]{1,2048})@"
)


def redact(text: str) -> str:
    """Replace URL userinfo (``user:pass@``) by ``***@``: proxy and Redis credentials never print."""
    if "@" not in text:  # most lines: no userinfo possible, no scan
        return text
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


_WHOLE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}://\S*")


def redact_request_url(url: str) -> str:
    """A request URL fit to show: its userinfo (``user:pass@``, or a bare token ``ghp_x@``) as ``***@``, the
    authority read as urllib reads it (it ends at the first ``/``, ``?`` or ``#``, so an ``@`` in a path stays:
    ``https://web.archive.org/web/2020/https://x.test/@foo``), and :func:`redact` over the rest (a URL with
    credentials passed in a query, ``?next=https://a:pw@intranet/``). Exact where :func:`redact` on the whole
    string takes ``http://h:8080/?e=a@b.example`` for a password; ``fleet replay`` fetches evidence URLs."""
    scheme, sep, rest = url.partition("://")
    end = min((p for p in (rest.find("/"), rest.find("?"), rest.find("#")) if p != -1), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{redact(tail)}"


def redact_data(value: object, *, secret_fields: bool = True) -> object:
    """JSON-like data fit to show or store as evidence: a string that is one URL through
    :func:`redact_request_url`, any other string through :func:`redact`, keys too; with ``secret_fields``,
    ``***`` for the value of a :data:`SECRET_KEYS` field. Why: DLQ fields, breaker samples and evidence
    objects carry request URLs, which may hold ``user:pass@`` (an entry queued before such URLs were
    refused, a Location), and these are printed by ``fleet dlq list --json`` and read by whoever opens the
    evidence. Evidence keeps its secret-named fields (``secret_fields=False``): ``fleet replay`` calls the
    callback with its cb_kwargs."""
    if isinstance(value, str):
        return redact_request_url(value) if _WHOLE_URL.fullmatch(value) else redact(value)
    if isinstance(value, dict):
        return {
            (redact(k) if isinstance(k, str) else k): (
                "***" if secret_fields and isinstance(k, str) and k.lower() in SECRET_KEYS and v
                else redact_data(v, secret_fields=secret_fields)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_data(v, secret_fields=secret_fields) for v in value]
    return value


#: A setting whose name says it holds a secret: SECRET, PASSWORD/PASSWD, TOKEN, CREDENTIAL, AUTH anywhere in
#: it, KEY as a word (``API_KEY``, ``AWS_ACCESS_KEY_ID``; not ``MONKEY``).
_SECRET_SETTING = re.compile(r"SECRET|PASSW(?:OR)?D|TOKEN|CREDENTIAL|AUTH|(?:^|_)KEYS?(?:_|$)", re.IGNORECASE)


def secret_setting(name: str) -> bool:
    """Whether a (Scrapy or project) setting's name says its value is a secret."""
    return bool(_SECRET_SETTING.search(name))


def redact_setting(name: str, value: object) -> object:
    """A setting's value fit to print: ``***`` for a secret-named setting (None and booleans stay: they
    say whether it is set, not what it is), URL credentials out of every string (:func:`redact`), and
    the same rules inside dicts (keys are names, or URIs as in ``FEEDS``), lists and tuples."""
    if secret_setting(name) and value is not None and not isinstance(value, bool):
        return "***"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {(redact(k) if isinstance(k, str) else k): redact_setting(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [redact_setting(name, v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "auth")


def redact_url(url: str) -> str:
    """Hide the password in a redis/proxy URL for display.

    ``redis://user:pw@host:6379/0`` -> ``redis://user:***@host:6379/0``; a bare
    ``scheme://name@host`` keeps the name (a username is not secret); secret-looking query
    parameters (``?password=...``) are masked too. Works on the string rather than
    round-tripping through urlunsplit, which would rewrite ``unix:///path`` as
    ``unix:/path``. Never raises: it is used in error paths.
    """
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # userinfo ends at the last '@' before any query/fragment (an unencoded password may
    # contain '/' or '@'); the authority ends at the first '/', '?' or '#' after it.
    cut = min((p for p in (rest.find("?"), rest.find("#")) if p != -1), default=len(rest))
    at = rest.rfind("@", 0, cut)
    end = len(rest)
    for ch in "/?#":
        pos = rest.find(ch, at + 1)
        if pos != -1:
            end = min(end, pos)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        authority = f"{_mask_userinfo(userinfo)}@{hostport}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        items = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            if eq and value and any(k in name.lower() for k in _SECRET_QUERY_KEYS):
                value = "***"
            items.append(f"{name}{eq}{value}")
        tail = f"{path}?{'&'.join(items)}{hash_}{fragment}"
    return f"{scheme}{sep}{authority}{tail}"


def _mask_userinfo(userinfo: str) -> str:
    user, sep, _password = userinfo.partition(":")
    return f"{user}:***" if sep else user


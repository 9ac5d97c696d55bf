"""Spider names, run ids and fingerprints: the strings that become Redis keys and object keys.

Why one definition: these three strings go straight into key names (``fleet:{spider}:done:RUN``,
``items/spider=S/run=R/ab/FP.jsonl``). They are checked where they enter (``fleet seed --run``, the CLI's
SPIDER arguments, a decoded queue entry) and again where they become object keys
(``scraper.store.objects``), so a hostile queue entry cannot name a path outside its spider's prefix, and a
fingerprint that is not hex cannot reach the Lua scripts that unpack it as hex (lua.py: ``hex2bin``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["NAME_RULE", "BadName", "check_fp", "check_run", "check_spider", "is_fp", "is_name"]

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_FP = re.compile(r"[0-9a-f]{16}")

NAME_RULE = "1-100 characters among letters, digits, '_', '-' and '.' (not '.' or '..')"


class BadName(ValueError):
    """A spider name, run id or fingerprint that must not become a key; the message says why."""


def is_name(value: Any) -> bool:
    """True for a usable spider name or run id ("." and ".." are path words, never names)."""
    return type(value) is str and _NAME.fullmatch(value) is not None and value not in (".", "..")


def is_fp(value: Any) -> bool:
    """True for a fingerprint as Fleet writes them: 16 lowercase hex digits (64 bits)."""
    return type(value) is str and _FP.fullmatch(value) is not None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_run(run: Any) -> str:
    if not is_name(run):
        raise BadName(f"run id {_shown(run)} cannot be used in keys: use {NAME_RULE}")
    return str(run)


def check_spider(name: Any) -> str:
    if not is_name(name):
        raise BadName(f"spider name {_shown(name)} cannot be used in keys: use {NAME_RULE}")
    return str(name)


def check_fp(fp: Any) -> str:
    if not is_fp(fp):
        raise BadName(f"fingerprint {_shown(fp)} is not 16 lowercase hex digits")
    return str(fp)

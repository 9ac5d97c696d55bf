"""Argument callbacks and output helpers shared by the command groups."""

from __future__ import annotations

import json
from typing import Any

import typer

from scraper.cli.common import (
    fail,
    out,
)
from scraper.queue.client import QueueError, check_spider_name
from scraper.queue.names import BadName, check_run

__all__ = ["SPIDER_ARG_HELP", "check_spider_kwargs", "emitted", "run_arg", "spider_arg", "spider_kwargs"]

SPIDER_ARG_HELP = "Spider argument NAME=VALUE, as `scrapy crawl -a` passes it to the spider; repeatable."



def emitted(rows: list[dict[str, Any]], as_json: bool, empty: str) -> bool:
    """JSON for scripts, or a one-line explanation when there is nothing to tabulate."""
    if as_json:
        print(json.dumps(rows))
        return True
    if not rows:
        out.print(empty)
        return True
    return False


def spider_arg(value: Any) -> Any:
    """Typer callback for SPIDER arguments: a name that cannot be a queue name is a usage error (exit
    2) here, not a traceback or an empty export later."""
    for name in value if isinstance(value, list) else [value]:
        if name is not None:
            try:
                check_spider_name(name)
            except QueueError as exc:
                raise typer.BadParameter(str(exc)) from None
    return value


def run_arg(value: Any) -> Any:
    """Typer callback for --run: a run id becomes part of Redis and object keys, so one that cannot is
    a usage error (exit 2) where it enters, not a bad key later."""
    if value is not None:
        try:
            check_run(value)
        except BadName as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def spider_kwargs(values: list[str] | None) -> dict[str, str]:
    """``-a NAME=VALUE`` options as the keyword arguments ``scrapy crawl -a`` gives a spider (``from_crawler``,
    then ``__init__``: attributes by default); one without ``=`` or with a name that is no identifier is a usage
    error (exit 2)."""
    out: dict[str, str] = {}
    for item in values or []:
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            raise typer.BadParameter(f"{item!r:.80}: give NAME=VALUE (NAME a Python identifier)", param_hint="'-a'")
        if name in _RESERVED:
            # Spider.__init__ would set it: `-a name=x` made the worker work spider x's queue
            raise typer.BadParameter(f"{name!r} is the spider's own attribute, not an argument", param_hint="'-a'")
        out[name] = value
    return out


_RESERVED = frozenset({"name", "crawler", "settings", "custom_settings"})


def check_spider_kwargs(spidercls: type[Any], kwargs: dict[str, str]) -> None:
    """A one-line error (exit 1) when ``spidercls(**kwargs)`` would fail for its arguments (a required one
    missing, an unknown one where ``__init__`` takes no ``**kwargs``): checked on the signature, without making
    the spider, so a worker started without an ``-a`` its spider needs says so instead of a traceback."""
    import inspect

    try:
        inspect.signature(spidercls).bind(**kwargs)  # the class: __init__ without self
    except TypeError as exc:
        raise fail(f"spider {getattr(spidercls, 'name', '?')!r}: {exc} (spider arguments are -a NAME=VALUE)") from None
    except ValueError:  # no signature to read (a C type): let the spider say it
        pass

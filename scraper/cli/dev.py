"""fleet smoke and fleet demo: checking an install and showing Fleet on its own demo site."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from scraper.cli.common import (
    check_reachable,
    load_config,
    redis_url_for,
)

__all__ = ["app"]

app = typer.Typer()

@app.command()
def smoke() -> None:
    """End-to-end idempotency smoke test against the configured Redis and store (embedded by default).

    Kills workers between object write and ack, and between DONE and ack, and checks that the retry
    neither doubles the object nor refetches a finished page; then a 1,000-request burst. Prints a
    JSON report; exit 0 when every check passed, 1 with the reason otherwise.
    """
    from scraper.devtools.smoke import run_smoke

    cfg = load_config()
    url = redis_url_for(cfg, project=False)  # its own burst: never a Redis a project's settings name
    asyncio.run(check_reachable(url))
    code, report = run_smoke(url, cfg)
    print(json.dumps(report, indent=2))
    raise typer.Exit(code)


@app.command()
def demo(
    products: Annotated[int, typer.Option(help="Products on the bundled demo site.")] = 200,
    concurrency: Annotated[int, typer.Option()] = 16,
) -> None:
    """The main job on embedded defaults: a local demo shop, seeded, crawled until idle, summarized."""
    from scraper.cli.demo import run_demo

    raise typer.Exit(run_demo(products=products, concurrency=concurrency))



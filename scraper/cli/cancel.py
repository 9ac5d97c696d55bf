"""fleet cancel: stop one run of a spider now (docs/architecture.md, "CLI and exit codes").

Why a command of its own: a run seeded by mistake (wrong URL list, a spider that loops) keeps every
worker busy until it drains; on-call needs one command that stops it fleet-wide, keeps what was already
written, and says what it removed. The queue side and its atomicity are in scraper/queue/cancel.py;
what a worker holding a lease of the run does is in scraper/worker/cancels.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from scraper.cli.args import run_arg, spider_arg
from scraper.cli.common import EXIT_ARGS, connect, fail, load_config, redis_url_for
from scraper.queue.cancel import CancelReport, cancel_run, is_known_run
from scraper.queue.client import Keys

__all__ = ["app"]

app = typer.Typer()


@app.command("cancel")
def cancel(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    run: Annotated[str, typer.Option("--run", callback=run_arg, help="The run to cancel (required).")],
) -> None:
    """Cancel RUN of SPIDER: drop its queued, delayed and parked requests (written objects stay).

    Workers drop the leases they hold of it without writing. Prints the counts as JSON. Exit 2 when the
    run was never seeded for SPIDER; 3 when Redis is unreachable. Running it again is harmless."""
    cfg = load_config()
    url = redis_url_for(cfg)

    async def go() -> CancelReport | None:
        client = await connect(url)
        try:
            if not await is_known_run(client, Keys(spider), run):
                return None
            return await cancel_run(client, spider, run)
        finally:
            await client.aclose()

    report = asyncio.run(go())
    if report is None:
        raise fail(f"spider {spider!r} has no run {run!r} (see `fleet status {spider}`)", EXIT_ARGS)
    print(json.dumps(report))

"""fleet export: a run's objects as Parquet or JSONL for analysts."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from scraper.cli.args import run_arg, spider_arg
from scraper.cli.common import (
    err,
    fail,
    load_config,
)
from scraper.infra import progress

__all__ = ["app"]

app = typer.Typer()

@app.command()
def export(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    run: Annotated[str, typer.Option("--run", callback=run_arg, help="The run to export.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    out: Annotated[Optional[str], typer.Option("--out", help="Store URI to write to (default: FLEET_STORE, under exports/).")] = None,
) -> None:
    """Export a run as one record per idempotency key (Parquet for DuckDB/Athena/pandas, or JSONL)."""
    from scraper.store.export import export_run

    if fmt not in {"parquet", "jsonl"}:
        raise fail(f"--format {fmt!r}: use parquet or jsonl")
    cfg = load_config()
    try:
        with progress.ExportProgress(spider, run, show=progress.enabled(cfg.log_format)) as bar:
            result = export_run(cfg.store, spider, run, fmt, out, bar)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if result["records"] == 0:
        err.print(f"[yellow]warning:[/] run {run!r} of {spider!r} has no items in {cfg.store}", highlight=False)
    print(json.dumps(result))



"""fleet export: a run's objects as Parquet or JSONL.gz for analysts (also ``fleet run --export``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from scraper.cli.args import run_arg, spider_arg
from scraper.cli.common import (
    EXIT_ARGS,
    EXIT_INFRA,
    err,
    fail,
    load_config,
)
from scraper.cli.manifests import record_export
from scraper.infra import progress
from scraper.infra.config import FleetConfig
from scraper.store.backends import StoreError

__all__ = ["app", "export_after_run"]

app = typer.Typer()


class _ExportFailed(Exception):
    """The store or the temp directory failed (exit 3); the message is one line, without secrets."""


def _export(cfg: FleetConfig, spider: str, run: str, fmt: str, out: str | None, memory_mb: int) -> dict[str, Any]:
    """Run the export with its progress bar; ValueError for bad arguments, _ExportFailed for the rest."""
    from scraper.store.export import export_run

    try:
        with progress.ExportProgress(spider, run, show=progress.enabled(cfg.log_format)) as bar:
            return export_run(cfg.store, spider, run, fmt, out, bar, phase=bar.phase,
                              memory_budget=memory_mb << 20)
    except StoreError as exc:
        raise _ExportFailed(f"export of {spider} run {run} failed: {exc}") from None
    except OSError as exc:  # the temp directory: disk full, read-only, gone
        where = f" ({exc.filename})" if exc.filename else ""
        raise _ExportFailed(f"export of {spider} run {run} failed: temp directory{where}: "
                            f"{exc.strerror or exc}") from None


@app.command()
def export(
    spider: Annotated[str, typer.Argument(callback=spider_arg, help="Spider name.")],
    run: Annotated[str, typer.Option("--run", callback=run_arg, help="The run to export.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet (zstd) or jsonl (gzipped JSON Lines).")] = "parquet",
    out: Annotated[Optional[str], typer.Option("--out", help="Directory or store URI to write spider=S/run=R/part-*.<ext> under (default: FLEET_STORE, under exports/).")] = None,
    memory_mb: Annotated[int, typer.Option("--memory-mb", help="Memory budget of the dedup, MB (records spill to $TMPDIR).")] = 64,
) -> None:
    """Export a run as one record per idempotency key (the latest fetched_at wins), in parts of at most 1M rows.

    Prints JSON {spider, run, format, records, parts, objects, duplicates, skipped_lines, location, elapsed_s,
    manifest}. Without --out, the run's manifest gets the export's figures in its "export" field (as with
    `fleet run --export`); "manifest" is its key, or null when the run has none or --out was given.
    Exit 2 when the store has neither a manifest nor an item of the run (a mistyped name); 3 when the store or
    the temp directory fails."""
    if fmt not in {"parquet", "jsonl"}:
        raise fail(f"--format {fmt!r}: use parquet or jsonl")
    if memory_mb < 8:
        raise fail("--memory-mb must be >= 8")
    cfg = load_config()
    if not _run_known(cfg, spider, run):
        raise fail(f"no run {run!r} of spider {spider!r} in {cfg.store}: no manifest and no items "
                   "(check the names: `fleet runs SPIDER` lists the runs)", EXIT_ARGS)
    try:
        result = _export(cfg, spider, run, fmt, out, memory_mb)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except _ExportFailed as exc:
        raise fail(str(exc), EXIT_INFRA) from None
    if result["records"] == 0:
        err.print(f"[yellow]warning:[/] run {run!r} of {spider!r} has no items in {cfg.store}", highlight=False)
    # the manifest describes the store's own exports/ only: parts written elsewhere are not the run's
    result["manifest"] = None if out is not None else record_export(cfg, spider, run, _field(result))
    print(json.dumps(result))


def _run_known(cfg: FleetConfig, spider: str, run: str) -> bool:
    """Whether the store has the run: its manifest, or one item object. A typo in the spider or the run exported an
    empty part under a new exports/ partition and exited 0; a run that wrote no items keeps its manifest
    (fleet run), so it still exports (empty, with its warning). Store errors: exit 3, as the export's own."""
    from scraper.store.backends import open_store
    from scraper.store.manifest import read_manifest

    try:
        store = open_store(cfg.store)
        if read_manifest(store, spider, run) is not None:
            return True
        return next(iter(store.scan(f"items/spider={spider}/run={run}/")), None) is not None
    except StoreError as exc:
        raise fail(f"export of {spider} run {run} failed: {exc}", EXIT_INFRA) from None
    except ValueError as exc:  # a name no key can hold
        raise fail(str(exc)) from None


def _field(res: dict[str, Any]) -> dict[str, Any]:
    """The manifest's and the run summary's ``export`` field: what analysts check their counts against."""
    return {"format": res["format"], "parts": res["parts"], "rows": res["records"], "duplicates": res["duplicates"],
            "location": res["location"]}


def export_after_run(cfg: FleetConfig, spider: str, run: str) -> tuple[dict[str, Any], str | None]:
    """``fleet run --export``: (the summary's ``export`` field, an error line or None). Never raises for an
    export failure: the run's summary is still printed, and the caller exits 3."""
    try:
        res = _export(cfg, spider, run, "parquet", None, 64)
    except (ValueError, _ExportFailed) as exc:
        return {"error": str(exc)}, str(exc)
    return _field(res), None

"""Writing run manifests (scraper.store.manifest) from what Redis and the run's workers know.

Who writes: ``fleet run`` (at start, every :data:`MANIFEST_EVERY` seconds while it waits for its workers,
and at its end with ``complete`` and its exit code) and ``fleet runs SPIDER --refresh`` (for runs driven
by plain ``fleet worker`` processes, or to bring a manifest up to date after a ``fleet dlq requeue``).
Not the workers' keeper: N workers would race to rewrite the same object with partial views, and only
``fleet run`` knows what was seeded, when the run started, its deadline and its exit code.

Each write is a full rewrite. What Redis holds is re-read every time (done, DLQ, this run's queued and
parked entries, the workers' flushed tallies); what only an invocation knows (seeded, outcomes per
class, ignored, elapsed) is carried over from the previous manifest and added to, so a run resumed after
a fix ends with the totals of all its ``fleet run`` invocations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from scraper.cli.common import err
from scraper.infra import log
from scraper.infra.config import FleetConfig
from scraper.queue import redisio
from scraper.queue.runstate import run_tally
from scraper.queue.shards import open_queue
from scraper.store.backends import open_store
from scraper.store.manifest import build, iso, manifest_key, read_manifest, write_manifest
from scraper.worker.identity import item_key_of, spider_version

__all__ = ["MANIFEST_EVERY", "RunManifest", "gather", "record_export"]

MANIFEST_EVERY = 10.0  # seconds between the manifests fleet run writes while its workers work


async def gather(redis_url: str, spider: str, run: str) -> dict[str, Any]:
    """The run's figures in Redis: seen/done, DLQ entries, its backlog, the spider's open breakers and
    the workers' tallies. A client of its own without connect()'s configuration warnings: this runs
    every few seconds and fleet run already warned once."""
    client = redisio.client(redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        q = await open_queue(client, spider)
        runs = await q.runs()
        dlq = unseen = 0
        async for _, entry in q.dlq_iter(run):
            dlq += 1
            # a refused scrapy-redis start entry (scraper.worker.redisfeed): never a request, never in SEEN
            unseen += str(entry.get("reason", "")).startswith("start_entry:")
        backlog = await q.run_backlog(run)
        scope = "run"
        if backlog is None:
            counts = await q.counts()
            backlog, scope = {k: counts[k] for k in ("ready", "inflight", "delayed", "parked")}, "spider"
        breakers = await q.breaker_states()  # the not-closed ones: domain -> state|until
        open_ = sorted(d for d, v in breakers.items() if v.split("|", 1)[0] in ("open", "half"))
        first = await q.first_seen(run)
        cancelled = bool(await client.hexists(q.keys.cancelled, run))  # marked in every shard (fleet cancel)
        return {"known": run in runs, "cancelled": cancelled, **runs.get(run, {"seen": 0, "done": 0}), "dlq": dlq, "dlq_unseen": unseen, "backlog": backlog,
                "scope": scope, "breakers_open": open_, "tally": await run_tally(client, q.keys, run),
                "first_seeded": None if first is None else float(first)}
    finally:
        await client.aclose()


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _add(a: Mapping[str, Any] | None, b: Mapping[str, int]) -> dict[str, int]:
    out = {k: int(v) for k, v in (a or {}).items() if isinstance(v, int)}
    for k, v in b.items():
        out[k] = out.get(k, 0) + int(v)
    return out


class RunManifest:
    """The manifest of one run as one writer keeps it up to date."""

    def __init__(self, cfg: FleetConfig, redis_url: str, spider: str, run: str, spidercls: type | None, *,
                 writer: str, seeded: int | None = None) -> None:
        self.redis_url = redis_url
        self.spider, self.run, self.writer = spider, run, writer
        self.store = open_store(cfg.store)
        self.log = log.get_logger(component="manifest")
        self.base: dict[str, Any] = {}
        try:
            self.base = read_manifest(self.store, spider, run) or {}
        except Exception as exc:  # no previous manifest to add to: the new one starts from this writer
            self.log.warning("manifest_unreadable", spider=spider, run=run, error=type(exc).__name__)
        counts = self.base.get("counts") or {}
        prior = counts.get("seeded")
        prior = prior if isinstance(prior, int) and not isinstance(prior, bool) and prior >= 0 else None
        # ``seeded`` is what this writer enqueued: a run given more URLs later (fleet run --run R again)
        # adds them to what its manifest already counts, or its earlier seeds would read as discovered
        self.seeded = prior if seeded is None else seeded + (prior or 0)
        self.version = spider_version(spidercls) if spidercls is not None else \
            str(self.base.get("spider_version") or "unknown")
        self.item_key = item_key_of(spidercls) if spidercls is not None else tuple(self.base.get("item_key") or ())
        self.started = time.time()
        self.last_write = 0.0
        self.key: str | None = None

    def write(self, *, final: bool, exit_code: int | None = None, why: str = "",
              outcomes: Mapping[str, int] | None = None, ignored: int | None = None,
              export: Mapping[str, Any] | None = None, rejected: Mapping[str, int] | None = None) -> str | None:
        """Rewrite the manifest; returns its key, or None after a one-line warning when Redis or the
        store failed (a manifest never changes a run's outcome or exit code)."""
        self.last_write = time.monotonic()
        try:
            figures = asyncio.run(gather(self.redis_url, self.spider, self.run))
            manifest = self._build(figures, final, exit_code, why, outcomes or {}, ignored, rejected or {})
            # `fleet run --export`: what the export wrote (parts, rows, location), so the rows analysts count
            # in DuckDB can be checked against the manifest; otherwise the one the stored manifest has now
            # (a `fleet export` may have recorded one since this writer read it)
            if export is None:
                export = self._stored_export()
            if export is not None:
                manifest["export"] = dict(export)
            self.key = write_manifest(self.store, manifest)
            return self.key
        except Exception as exc:
            self._not_written(exc)
            return None

    def _not_written(self, exc: Exception) -> None:
        """The one-line warning of a manifest Redis or the store kept from being written."""
        detail = log.redact(str(exc))[:200] or type(exc).__name__
        self.log.warning("manifest_write_failed", spider=self.spider, run=self.run, error=type(exc).__name__)
        err.print(f"[yellow]warning:[/] manifest of run {self.run!r} not written: {detail}",
                  highlight=False, soft_wrap=True, markup=True)

    def _added(self, outcomes: Mapping[str, int], ignored: int | None) -> tuple[dict[str, int], int | None, float]:
        """Outcomes, ignored and elapsed seconds of the run: what it had before this writer (its base manifest)
        plus what this invocation's workers reported and its own time."""
        counts = self.base.get("counts") or {}
        prev_ignored = counts.get("ignored")
        total_ignored = None if ignored is None and prev_ignored is None else int(prev_ignored or 0) + int(ignored or 0)
        elapsed = float(counts.get("elapsed_s") or 0) + (time.time() - self.started)
        return _add(counts.get("outcomes"), outcomes), total_ignored, elapsed

    def write_unreachable(self, *, exit_code: int, why: str, outcomes: Mapping[str, int] | None = None,
                          ignored: int | None = None) -> str | None:
        """Redis went away before the run's end: the last manifest written (its figures, Redis's, as of
        its ``updated_at``, kept in ``figures_as_of``) becomes the final one, incomplete, with ``why``.
        Without this the stored manifest went on saying "the run is still being worked on" (``final:
        false``) though its ``fleet run`` had exited 3. What this invocation's workers reported (``outcomes``,
        ``ignored``) and its time are added to the counts the run had before it, as ``write`` adds them.
        Returns its key, or None (none written before, or the store failed: a warning, as ``write``)."""
        try:
            current = read_manifest(self.store, self.spider, self.run)
            if not current:
                return None
            now = iso(time.time())
            counts = dict(current.get("counts") or {})
            total, total_ignored, elapsed = self._added(outcomes or {}, ignored)
            counts["outcomes"] = dict(sorted(total.items()))
            if total_ignored is not None:
                counts["ignored"] = total_ignored
            counts["elapsed_s"] = round(elapsed, 2)
            current.update(counts=counts, final=True, complete=False, exit_code=exit_code, incomplete_reasons=[why],
                           written_by=self.writer, finished_at=now, figures_as_of=current.get("updated_at"),
                           updated_at=now)
            self.key = write_manifest(self.store, current)
            return self.key
        except Exception as exc:
            self._not_written(exc)
            return None

    def _stored_export(self) -> Mapping[str, Any] | None:
        try:
            current = read_manifest(self.store, self.spider, self.run) or {}
        except Exception:  # unreadable now: the one this writer started from
            current = self.base
        found = current.get("export", self.base.get("export"))
        return found if isinstance(found, Mapping) else None

    def tick(self) -> None:
        """Called while fleet run waits: a progress manifest every MANIFEST_EVERY seconds."""
        if time.monotonic() - self.last_write >= MANIFEST_EVERY:
            self.write(final=False)

    def _build(self, f: Mapping[str, Any], final: bool, exit_code: int | None, why: str,
               outcomes: Mapping[str, int], ignored: int | None, rejected: Mapping[str, int]) -> dict[str, Any]:
        base, counts = self.base, self.base.get("counts") or {}
        by_run = self.writer == "fleet run"
        backlog = f["backlog"]
        queued = sum(int(backlog.get(k, 0)) for k in ("ready", "inflight", "delayed"))
        if not by_run:  # fleet runs --refresh: final once nothing of the run is left to work on
            final = queued == 0
        total, total_ignored, added = self._added(outcomes, ignored)
        elapsed = added if by_run else counts.get("elapsed_s")
        finished = iso(time.time()) if final and by_run else (base.get("finished_at") if final else None)
        return build(
            spider=self.spider, run=self.run, spider_version=self.version, item_key=self.item_key,
            writer=self.writer, final=final,
            started_at=base.get("started_at") or iso(f["first_seeded"] or self.started),
            finished_at=finished, elapsed_s=elapsed, seeded=self.seeded, seen=int(f["seen"]),
            done=int(f["done"]), dlq=int(f["dlq"]), backlog=backlog, scope=f["scope"], ignored=total_ignored,
            outcomes=total, breakers_open=f["breakers_open"], tally=f["tally"],
            exit_code=exit_code if by_run else None, why_incomplete=why, cancelled=bool(f.get("cancelled")),
            rejected=_add({k: counts.get(k) for k in ("rejected", "discovered_rejected")}, rejected),
            dlq_unseen=int(f.get("dlq_unseen", 0)),
        )


def _export_mended(manifest: dict[str, Any]) -> None:
    """A `fleet run --export` whose export failed left the manifest incomplete (exit 3) for that failure alone; an
    export that now succeeded gives the manifest back the run's own verdict (kept in the failed export's record as
    ``run_exit_code``/``run_why``). Any other reason keeps it incomplete."""
    failed = manifest.get("export") or {}
    if not isinstance(failed, dict) or "error" not in failed or "run_exit_code" not in failed:
        return
    reasons = [r for r in manifest.get("incomplete_reasons") or [] if r != failed["error"]]
    own = failed["run_exit_code"]
    if own not in (0, 2, 4) and own is not None:
        reasons.insert(0, str(failed.get("run_why") or f"fleet run exited with {own}"))
    manifest["exit_code"] = own
    manifest["incomplete_reasons"] = reasons
    manifest["complete"] = not reasons


def record_export(cfg: FleetConfig, spider: str, run: str, export: Mapping[str, Any]) -> str | None:
    """``fleet export`` to the store's own exports/: put what it wrote into the run's manifest (its
    ``export`` field, as ``fleet run --export`` does), so DuckDB's counts over the parts can be checked
    against the manifest after a separate export. Only that field changes (the figures stay those of the
    manifest's writer), so exporting again with the same result rewrites the same bytes. Returns the
    manifest's key; None when the run has no manifest yet (``fleet runs SPIDER --refresh`` writes one and
    keeps the field) or, after a one-line warning, when the store failed: the export itself succeeded."""
    store = open_store(cfg.store)
    try:
        manifest = read_manifest(store, spider, run)
        if manifest is None:
            return None
        if manifest.get("export") == dict(export):
            return str(manifest_key(spider, run))
        _export_mended(manifest)
        manifest["export"] = dict(export)
        return write_manifest(store, manifest)
    except Exception as exc:
        log.get_logger(component="manifest").warning("manifest_write_failed", spider=spider, run=run,
                                                     error=type(exc).__name__)
        err.print(f"[yellow]warning:[/] manifest of run {run!r} not updated with the export: "
                  f"{log.redact(str(exc))[:200] or type(exc).__name__}", highlight=False, soft_wrap=True)
        return None

"""``fleet export``: one record per idempotency key of a run, as Parquet (or JSONL.gz) for analysts.

Why a separate step: items objects are written per request for exactly-once effects; analysts want a few
columnar files per run that DuckDB / Athena / pandas read directly. The same key may be in several objects
(a product on several pages, once keys derive from declared fields) and the export keeps one record for it:
the latest ``fetched_at``, ties broken by the record text (scraper.store.dedup).

It scales by streaming: keys are listed into a temp file (S3 pages, or an unsorted directory walk), objects
are fetched in a bounded thread pool with a bounded number in flight, records are spilled to hash
partitions on disk and deduplicated one partition at a time, and parts are written from disk and uploaded
from disk (multipart on S3). Memory is bounded by ``memory_mb`` whatever the run's size; the temp
directory ($TMPDIR) needs about twice the size of the run's items. Output is deterministic: the same
objects give the same rows in the same order (sorted by the key's hash, then the key), whatever order
they were read in.

Layout: ``exports/spider=<s>/run=<r>/part-NNNNN.parquet`` (or ``.jsonl.gz``) in the store, or
``spider=<s>/run=<r>/part-NNNNN.<ext>`` under ``--out``; parts of an earlier export of the same run in the same
format that this one did not write are deleted after the new ones are in place (the other format's stay).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from scraper.infra.log import get_logger
from scraper.queue.names import check_run, check_spider
from scraper.store.backends import LocalStore, ObjectStore, S3Store, open_store
from scraper.store.dedup import Spill
from scraper.store.parts import PART_ROWS, JsonlParts, ParquetParts

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MEMORY_MB", "FORMATS", "export_run", "open_target"]

FORMATS = ("parquet", "jsonl")
#: Memory budget of the dedup and of a Parquet row group (the process adds ~100 MB: Python, pyarrow).
DEFAULT_MEMORY_MB = 64
DEFAULT_BUDGET = DEFAULT_MEMORY_MB << 20
_LOGGED_SKIPS = 5  # bad lines logged one by one; the rest only counted

_raw_decode = json.JSONDecoder().raw_decode


def _parse(line: bytes) -> Any:
    """json.loads of a stripped line without its per-call encoding sniffing and whitespace regexes (a third
    of the export's parse time): UTF-8 only, as the worker writes; trailing text is an error too."""
    text = line.decode("utf-8")
    value, end = _raw_decode(text)
    if end != len(text):
        raise ValueError(f"extra data at column {end + 1}")
    return value


_log = get_logger(component="export")  # started/finished at DEBUG: stdout has the result, stderr stays quiet


def open_target(store: ObjectStore, out: str | None, spider: str, run: str) -> tuple[ObjectStore, str]:
    """Where the parts go: (store, key prefix). ``out`` is a store URI or a local directory."""
    if not out:
        return store, f"exports/spider={spider}/run={run}/"
    target = open_store(out) if "://" in out else LocalStore(f"file://{os.path.abspath(out)}")
    return target, f"spider={spider}/run={run}/"


class _Reader:
    """Objects of the run, fetched in a bounded pool; their records spilled for the dedup."""

    def __init__(self, store: ObjectStore, spill: Spill) -> None:
        self.store = store
        self.spill = spill
        self.objects = 0
        self.vanished = 0  # listed, then gone before the GET (a concurrent delete): nothing to export
        self.skipped = 0  # lines that are not a JSON object

    def _skip(self, key: str, lineno: int, why: str) -> None:
        self.skipped += 1
        if self.skipped <= _LOGGED_SKIPS:
            _log.warning("export_line_skipped", key=key, line=lineno, reason=why)

    def records(self, key: str, data: bytes) -> None:
        for i, line in enumerate(data.split(b"\n"), 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = _parse(line)
            except ValueError as exc:  # not JSON, or not UTF-8
                self._skip(key, i, f"{type(exc).__name__}: {str(exc)[:80]}")
                continue
            if not isinstance(rec, dict):
                self._skip(key, i, f"a JSON {type(rec).__name__}, not an object")
                continue
            meta = rec.get("_meta")
            meta = meta if isinstance(meta, dict) else {}
            ikey = meta.get("idempotency_key")
            if not isinstance(ikey, str) or not ikey:
                ikey = f"{key}#{i}"  # not written by a worker: kept, never merged with another record
            self.spill.add(ikey, meta.get("fetched_at"), line)

    def _get(self, key: str) -> bytes | None:
        try:
            return self.store.get(key)
        except KeyError:
            return None

    def read(self, keys: Iterator[str], total: int, threads: int,
             progress: Callable[[int, int], None] | None) -> None:
        """GET every key, at most ``2 * threads`` in flight; records are parsed here, in this thread.
        One thread: plain sequential reads (a local disk; a pool's hand-offs cost more than they save)."""
        if threads <= 1:
            for key in keys:
                self._took(key, self._get(key), total, progress)
            return
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fleet-export")
        pending: dict[Future[bytes | None], str] = {}
        try:
            for key in keys:
                pending[pool.submit(self._get, key)] = key
                if len(pending) >= 2 * threads:
                    self._drain(pending, total, progress)
            while pending:
                self._drain(pending, total, progress)
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _drain(self, pending: dict[Future[bytes | None], str], total: int,
               progress: Callable[[int, int], None] | None) -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in sorted(done, key=lambda f: pending[f]):
            key = pending.pop(fut)
            self._took(key, fut.result(), total, progress)  # a StoreError ends the export

    def _took(self, key: str, data: bytes | None, total: int,
              progress: Callable[[int, int], None] | None) -> None:
        """One object read (None: it vanished between the listing and the GET)."""
        if data is None:
            self.vanished += 1
        else:
            self.records(key, data)
        self.objects += 1
        if progress is not None:
            progress(self.objects, total)


def _list_keys(store: ObjectStore, prefix: str, path: Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        for key in store.scan(prefix):
            f.write(key + "\n")
            n += 1
    return n


def _keys_from(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="surrogatepass") as f:
        for line in f:
            yield line[:-1]


def export_run(
    store_uri: str, spider: str, run: str, fmt: str, out: str | None,
    progress: Callable[[int, int], None] | None = None,
    *,
    phase: Callable[[str], None] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    threads: int | None = None,
    part_rows: int = PART_ROWS,
    tmp_dir: str | None = None,
) -> dict[str, Any]:
    """Export run ``run`` of ``spider``; returns what the CLI prints. ``progress(objects read, objects)``
    and ``phase(name)`` feed a progress bar; ``memory_budget`` (bytes) bounds the dedup's keys in memory
    and a Parquet row group's record bytes (an eighth of it). Raises ValueError for bad arguments, StoreError when the
    store fails and OSError when the temp directory does (both: infrastructure, exit 3)."""
    check_spider(spider)
    check_run(run)
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use parquet or jsonl")
    started = time.monotonic()
    store = open_store(store_uri)
    target, prefix = open_target(store, out, spider, run)
    budget = memory_budget
    threads = threads or (16 if isinstance(store, S3Store) else 1)
    with tempfile.TemporaryDirectory(prefix="fleet-export-", dir=tmp_dir) as tmp:
        work = Path(tmp)
        if phase is not None:
            phase("listing")
        total = _list_keys(store, f"items/spider={spider}/run={run}/", work / "keys")
        _log.debug("export_started", spider=spider, run=run, format=fmt, objects=total)
        if progress is not None:
            progress(0, total)
        spill = Spill(work, budget)
        reader = _Reader(store, spill)
        reader.read(_keys_from(work / "keys"), total, threads, progress)
        if phase is not None:
            phase("writing")
        writer: JsonlParts | ParquetParts
        if fmt == "jsonl":
            writer = JsonlParts(work, part_rows)
            for line in spill.winners():
                writer.add(line)
        else:
            writer = ParquetParts(work, budget // 8, part_rows)
            for line in spill.winners():
                writer.add(_parse(line), len(line))
        paths = writer.finish()
        names = [p.name for p in paths]
        for p in paths:
            target.put_file(prefix + p.name, p, content_type="application/octet-stream")
            p.unlink()
    # parts of this format only: an analyst's JSONL copy must not delete the Parquet a cron run exported
    ext = "parquet" if fmt == "parquet" else "jsonl.gz"
    stale = [k for k in target.list(prefix) if _is_part(k[len(prefix):], ext) and k[len(prefix):] not in names]
    for key in stale:
        target.delete(key)
    result = {
        "spider": spider, "run": run, "format": fmt, "records": writer.rows, "parts": len(names),
        "objects": reader.objects, "duplicates": spill.records - writer.rows, "skipped_lines": reader.skipped,
        "location": target.describe(prefix.rstrip("/")), "elapsed_s": round(time.monotonic() - started, 3),
    }
    _log.debug("export_finished", **{k: v for k, v in result.items() if k not in ("spider", "run")},
              spider=spider, run=run, vanished=reader.vanished, splits=spill.splits)
    return result


def _is_part(name: str, ext: str) -> bool:
    """An export part file name of one format (``part-NNNNN.parquet`` / ``.jsonl.gz``), nothing else under the
    prefix."""
    stem, _, found = name.partition(".")
    return "/" not in name and found == ext and stem.startswith("part-") and stem[5:].isdigit()

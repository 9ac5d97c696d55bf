"""The run manifest: ``runs/spider=<s>/run=<r>/manifest.json``, one JSON object per run in the store.

Why: an analyst opening a run's objects must be able to tell, without Redis or the operators, whether
the run is complete, what it contains and whether its numbers add up. The manifest is a full rewrite
each time (an atomic put of one object, so a reader sees the previous version or the new one, never
half), built by :func:`build` from figures gathered elsewhere (scraper.cli.manifests): this module only
shapes and checks them, so the rules (reconciliation, ``complete``) are pure and tested alone.

Fields (docs/architecture.md, "Object store layout"): ``complete``, ``final`` (false while ``fleet run``
still works on it), ``started_at`` / ``finished_at`` / ``updated_at``, ``counts`` (seeded, discovered,
seen, done, dlq, parked, queued, ignored, outcomes per class, breakers open, elapsed), ``reconciliation``
(seen = done + dlq + parked + queued, and which side is off when it is not), ``items``, ``objects``,
``field_coverage`` (share of items with each field non-empty), ``schema`` (field -> JSON type(s)),
``spider``, ``spider_version``, ``item_key``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from scraper.queue.names import check_run, check_spider
from scraper.store.backends import ObjectStore

__all__ = [
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "build",
    "coverage_and_schema",
    "iso",
    "list_manifests",
    "manifest_key",
    "read_manifest",
    "reconcile",
    "write_manifest",
]

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is a few KiB; a bigger object there is not ours


def manifest_key(spider: str, run: str) -> str:
    return f"runs/spider={check_spider(spider)}/run={check_run(run)}/manifest.json"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def reconcile(*, seen: int, done: int, dlq: int, parked: int, queued: int, scope: str,
              cancelled: bool = False, dlq_unseen: int = 0) -> dict[str, Any]:
    """Every request seen (seeded or discovered) is done (ignored ones included: they are recorded as
    done), in the DLQ, parked or still queued; in a cancelled run, the rest were dropped by the cancel
    (``cancelled_dropped``), not lost. ``dlq_unseen``: DLQ entries of the run that never were requests of it
    (a scrapy-redis start entry refused before it became one: no fingerprint, never in SEEN), so not
    counted against SEEN. ``problem`` says which side does not add up, or None."""
    accounted = done + dlq - dlq_unseen + parked + queued
    diff = seen - accounted
    problem = None
    dropped = 0
    if cancelled and diff > 0:
        dropped, diff = diff, 0
    if diff > 0:
        problem = (f"{diff} of {seen} requests seen are neither done, in the DLQ, parked nor queued "
                   "(lost, or a DLQ entry trimmed or deleted)")
    elif diff < 0:
        problem = (f"done {done} + dlq {dlq - dlq_unseen} + parked {parked} + queued {queued} = {accounted} "
                   f"exceeds the {seen} requests seen by {-diff} (a DLQ entry requeued and finished counts twice, or "
                   "SEEN expired)")
    if problem and scope != "run":
        problem += "; parked and queued are the spider's, all runs (backlog too large to read per run)"
    out = {"ok": diff == 0, "seen": seen, "done": done, "dlq": dlq, "parked": parked, "queued": queued,
           "unaccounted": diff, "scope": scope, "problem": problem, "dlq_unseen": dlq_unseen}
    if cancelled:
        out["cancelled_dropped"] = dropped
    return out


def coverage_and_schema(tally: Mapping[str, int]) -> tuple[dict[str, float], dict[str, str]]:
    """Field coverage (items with the field non-empty / items) and schema (field -> JSON type, types
    joined with | when a field had several, null last) from the workers' tallies (scraper.worker.tally)."""
    items = int(tally.get("items", 0))
    nonempty: dict[str, int] = {}
    types: dict[str, set[str]] = {}
    for k, n in tally.items():
        if k.startswith("c:"):
            nonempty[k[2:]] = int(n)
        elif k.startswith("t:") and k.count(":") >= 2:
            _, kind, name = k.split(":", 2)
            if n > 0:
                types.setdefault(name, set()).add(kind)
    coverage = {f: (round(min(nonempty.get(f, 0), items) / items, 4) if items else 0.0) for f in sorted(types)}
    schema = {f: "|".join(sorted(t - {"null"}) + (["null"] if "null" in t else [])) for f, t in sorted(types.items())}
    return coverage, schema


def build(
    *,
    spider: str,
    run: str,
    spider_version: str,
    item_key: tuple[str, ...] | list[str],
    writer: str,
    final: bool,
    started_at: str | None,
    finished_at: str | None,
    elapsed_s: float | None,
    seeded: int | None,
    seen: int,
    done: int,
    dlq: int,
    backlog: Mapping[str, int],
    scope: str,
    ignored: int | None,
    outcomes: Mapping[str, int],
    breakers_open: list[str],
    tally: Mapping[str, int],
    exit_code: int | None = None,
    why_incomplete: str = "",
    cancelled: bool = False,
    rejected: Mapping[str, int] | None = None,
    dlq_unseen: int = 0,
) -> dict[str, Any]:
    """The manifest object. ``complete`` only when the run drained (nothing queued), nothing of it is parked
    (an open breaker of the spider counts through those only), the counts reconcile, and (for ``fleet run``)
    its exit code was 0, 2 or 4: DLQ entries are settled requests, so a run with ``dlq > 0`` can be complete
    (exit 4 tells cron); a run still being worked on (``final: false``) never is."""
    queued = int(backlog.get("ready", 0)) + int(backlog.get("inflight", 0)) + int(backlog.get("delayed", 0))
    parked = int(backlog.get("parked", 0))
    rec = reconcile(seen=seen, done=done, dlq=dlq, parked=parked, queued=queued, scope=scope, cancelled=cancelled,
                    dlq_unseen=dlq_unseen)
    reasons = []
    if not final:
        reasons.append("the run is still being worked on")
    if exit_code is not None and exit_code not in (0, 2, 4):
        reasons.append(why_incomplete or f"fleet run exited with {exit_code}")
    if cancelled and not any("cancelled" in r for r in reasons):
        reasons.append("the run was cancelled")
    for why in ([f"{parked} requests parked"] if parked else []) + \
               ([f"{queued} requests still queued"] if queued else []) + \
               (["breaker open for " + ", ".join(breakers_open[:5])] if breakers_open and parked else []):
        if not any(why in r for r in reasons):  # fleet run's own reason may already say it
            reasons.append(why)
    if not rec["ok"]:
        reasons.append("the counts do not reconcile")
    coverage, schema = coverage_and_schema(tally)
    return {
        "manifest_version": MANIFEST_VERSION,
        "spider": spider,
        "run": run,
        "spider_version": spider_version,
        "item_key": list(item_key) or None,
        "complete": not reasons,
        "incomplete_reasons": reasons,
        "final": final,
        "written_by": writer,
        "exit_code": exit_code,
        "started_at": started_at,
        "finished_at": finished_at,
        "updated_at": iso(time.time()),
        "counts": {
            "seeded": seeded,
            "discovered": None if seeded is None else max(0, seen - seeded),
            "seen": seen,
            "done": done,
            "dlq": dlq,
            "parked": parked,
            "queued": {k: int(backlog.get(k, 0)) for k in ("ready", "inflight", "delayed")},
            "ignored": ignored,
            # input URLs refused at seeding and requests the spider yielded that could not be queued: work
            # that is in no other count (fleet run exits 2 for them; the run can still be complete)
            "rejected": int((rejected or {}).get("rejected", 0)),
            "discovered_rejected": int((rejected or {}).get("discovered_rejected", 0)),
            "outcomes": dict(sorted(outcomes.items())),
            "breakers_open": breakers_open,
            "elapsed_s": None if elapsed_s is None else round(elapsed_s, 2),
        },
        "reconciliation": rec,
        "items": int(tally.get("items", 0)),
        "objects": int(tally.get("objects", 0)),
        "key_missing": int(tally.get("key_missing", 0)),
        "fields_dropped": int(tally.get("fields_dropped", 0)),
        "field_coverage": coverage,
        "schema": schema,
    }


def write_manifest(store: ObjectStore, manifest: Mapping[str, Any]) -> str:
    """One atomic put of the whole object (idempotent: the same figures give the same manifest)."""
    key = manifest_key(str(manifest["spider"]), str(manifest["run"]))
    data = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=False).encode("utf-8") + b"\n"
    store.put(key, data, content_type="application/json")
    return key


def read_manifest(store: ObjectStore, spider: str, run: str) -> dict[str, Any] | None:
    """The run's manifest, or None when there is none (or it is not a manifest: too big, not JSON)."""
    try:
        data = store.get(manifest_key(spider, run))
    except KeyError:
        return None
    return _parse(data)


def _parse(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_MANIFEST_BYTES:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "run" in doc else None


def list_manifests(store: ObjectStore, spider: str) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(key, manifest or None when unreadable) for every manifest of the spider, in key order."""
    prefix = f"runs/spider={check_spider(spider)}/"
    for key in store.list(prefix):
        if key.endswith("/manifest.json"):
            try:
                yield key, _parse(store.get(key))
            except KeyError:
                continue  # deleted between list and get

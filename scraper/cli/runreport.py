"""What ``fleet run`` reports and which exit code it ends with.

Why a module of its own: cron trusts the exit code and nothing else, so the rule that turns a run's
end state into a code is a pure function (:func:`exit_code`) that tests can hold to the documented
table, and the summary is assembled in one place from the two sources that know the figures: Redis
(seen / done / DLQ and the queued and parked requests per run, breakers per spider) and the final stats of the run's
own worker processes (outcomes per class, ignored, objects), which each worker writes to the file
named by ``FLEET_STATS_FILE`` when it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_ARGS",
    "EXIT_DLQ",
    "EXIT_INCOMPLETE",
    "EXIT_INFRA",
    "STATS_ENV",
    "exit_code",
    "merge_worker_stats",
    "summarize",
    "write_worker_stats",
]

EXIT_CONFIG = 1
EXIT_ARGS = 2
EXIT_INFRA = 3
EXIT_DLQ = 4
EXIT_INCOMPLETE = 5

#: Environment variable through which ``fleet run`` asks each worker for its final stats (a JSON file).
STATS_ENV = "FLEET_STATS_FILE"


_REASON = "fleet/finish_reason/"  # a worker's Scrapy finish_reason, in its stats file
# finish reasons of a worker that stopped as Fleet stops it: anything else is the spider's own doing
_ROUTINE = frozenset({"finished", "shutdown"})  # (a bare CloseSpider() says "cancelled": the spider's own)

def write_worker_stats(stats: Mapping[str, Any], path: str | None = None) -> None:
    """Write a worker's numeric ``fleet/*`` stats (and its item count) to ``$FLEET_STATS_FILE``, if set.

    Atomic (temp file + rename) so that the parent never reads half a file; best effort, since a
    missing file only leaves the outcome counts out of the summary, never changes the exit code.
    """
    path = path or os.environ.get(STATS_ENV)
    if not path:
        return
    keep = {k: v for k, v in stats.items()
            if isinstance(v, (int, float)) and (k.startswith("fleet/") or k == "item_scraped_count")}
    reason = stats.get("finish_reason")
    if isinstance(reason, str) and reason:  # why the worker's spider closed (closespider_itemcount, ...)
        keep[f"{_REASON}{reason[:100]}"] = 1
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".stats-")
        with os.fdopen(fd, "w") as fh:
            json.dump(keep, fh)
        os.replace(tmp, path)


def merge_worker_stats(paths: Iterable[Path]) -> dict[str, Any]:
    """Add up the stats files the run's workers left (unreadable or missing files are skipped)."""
    total: dict[str, float] = {}
    read = 0
    for p in paths:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        read += 1
        for k, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    outcomes = {k[len("fleet/class/"):]: int(v) for k, v in sorted(total.items()) if k.startswith("fleet/class/")}
    return {
        "workers_reporting": read,
        "outcomes": outcomes,
        "ignored": int(total.get("fleet/ignored", 0)),
        "objects": int(total.get("fleet/objects", 0)),
        # items written in objects, not Scrapy's item_scraped_count (items through the pipelines, also those
        # of a page that then went to the DLQ or parked as drift: never stored)
        "items": int(total.get("fleet/items/written", 0)),
        "retried": int(total.get("fleet/retried", 0)),
        # requests the spider yielded that could not be queued (cb_kwargs no JSON, a callback that is no
        # method of the spider): lost work, each a request_rejected line in the worker's log
        "discovered_rejected": int(total.get("fleet/discovered_rejected", 0)),
        # why the workers' spiders closed, and how many workers each: "finished" (idle), "shutdown" (a signal,
        # the deadline), or the spider's own: CloseSpider's reason, CLOSESPIDER_ITEMCOUNT's "closespider_itemcount"
        "finish_reasons": {k[len(_REASON):]: int(v) for k, v in sorted(total.items()) if k.startswith(_REASON)},
    }


def summarize(
    *,
    spider: str,
    run: str,
    resumed: bool,
    seeded: int,
    skipped: int,
    run_seeded: int | None = None,
    rejected: int = 0,
    seen: int,
    done: int,
    dlq: int,
    queue: Mapping[str, int],
    breakers: Mapping[str, Mapping[str, Any]],
    workers: Mapping[str, Any],
    worker_codes: list[int],
    deadline_passed: bool,
    elapsed_s: float,
    store: str,
    queue_scope: str = "run",
) -> dict[str, Any]:
    """The JSON summary ``fleet run`` prints (and logs as ``run_finished``).

    ``seen`` counts every request of the run ever enqueued (seeded and discovered; ``run_seeded`` is the
    run's seeded total over all its invocations, from its manifest, for ``discovered``) and every redirect hop a
    request followed; ``done`` those that finished (an object, an ignore or a D outcome recorded as done;
    a redirect hop with its request); ``dlq`` the run's DLQ entries.
    ``parked`` and ``pending`` (ready + inflight + delayed) are this run's, read from ``queue``, so another
    run's backlog never makes this one incomplete; ``backlog_scope`` is "spider" when the spider's backlog
    was too large to read per run (scraper.queue.runstate.BACKLOG_LIMIT) and ``queue`` holds all its runs.
    ``breakers_open`` is the spider's (breakers are per spider and domain, not per run).
    """
    # discovered = seen - what the run's seeding enqueued over all its invocations: the run's manifest
    # carries that total (``run_seeded``, this invocation's seeds included); a resumed run without one
    # gives None (unknown), a new one its own seeds
    total_seeded = run_seeded if run_seeded is not None or resumed else seeded
    open_breakers = sorted(d for d, b in breakers.items() if b.get("state", "closed") != "closed")
    pending = int(queue.get("ready", 0)) + int(queue.get("inflight", 0)) + int(queue.get("delayed", 0))
    return {
        "spider": spider,
        "run": run,
        "resumed": resumed,
        "seeded": seeded,
        "skipped": skipped,
        "rejected": rejected,
        "discovered": max(0, seen - total_seeded) if total_seeded is not None else None,
        "seen": seen,
        "done": done,
        "dlq": dlq,
        "parked": int(queue.get("parked", 0)),
        "pending": pending,
        "backlog_scope": queue_scope,
        "breakers_open": open_breakers,
        "ignored": workers.get("ignored", 0),
        "outcomes": workers.get("outcomes", {}),
        "objects": workers.get("objects", 0),
        "items": workers.get("items", 0),
        "retried": workers.get("retried", 0),
        "discovered_rejected": workers.get("discovered_rejected", 0),
        "finish_reasons": workers.get("finish_reasons", {}),
        "workers_reporting": workers.get("workers_reporting", 0),
        "deadline_passed": deadline_passed,
        "workers": len(worker_codes),
        "worker_exit_codes": worker_codes,
        "elapsed_s": round(elapsed_s, 2),
        "store": store,
    }


def exit_code(summary: Mapping[str, Any]) -> tuple[int, str]:
    """The exit code for a run's summary, with the one-line reason (empty for 0).

    3 a worker failed (Redis or the store down past its limit, or it was killed); 1 a worker could
    not start (configuration); 5 incomplete: the deadline passed with work left, requests are parked
    or still queued (a breaker open counts through the run's parked requests: it is the spider's); 4 the
    run drained but some of its requests ended in the DLQ; 2 it drained but some input URLs were rejected at seeding, or requests the spider yielded could not be
    queued (``discovered_rejected``); 0 drained with nothing parked and
    nothing pending. Incomplete wins over DLQ: a run that did not finish is the louder news for cron.
    """
    codes = summary.get("worker_exit_codes") or []
    if any(c not in (0, EXIT_CONFIG) for c in codes):
        bad = next(c for c in codes if c not in (0, EXIT_CONFIG))
        return EXIT_INFRA, f"a worker exited with {bad} (infrastructure failure or killed; see its log)"
    if EXIT_CONFIG in codes:
        return EXIT_CONFIG, "a worker could not start (configuration; see its log)"
    why = []
    if summary.get("cancelled"):
        why.append(f"the run was cancelled (fleet cancel {summary['spider']} --run {summary['run']})")
    if summary.get("deadline_passed") and summary.get("pending"):
        why.append("the deadline passed (or fleet run got SIGTERM)")
    if summary.get("parked"):
        why.append(f"{summary['parked']} requests parked")
        # a breaker is the spider's, all runs': it makes this run incomplete through this run's parked requests
        # only (another run's drift must not turn a drained run into exit 5)
        if summary.get("breakers_open"):
            why.append("breaker open for " + ", ".join(summary["breakers_open"][:5]))
    closed = sorted(r for r in summary.get("finish_reasons") or {} if r not in _ROUTINE)
    if summary.get("pending") and closed:
        why.append("the spider closed itself (" + ", ".join(closed[:3]) + ")")
    if summary.get("pending"):
        why.append(f"{summary['pending']} requests still queued")
    if why:
        resume = f"fleet run {summary['spider']} --resume {summary['run']}"
        hint = "" if summary.get("cancelled") else \
            f" (after a fix: fleet breakers reset, then {resume})" if summary.get("parked") or summary.get("breakers_open") \
            else f" (finish it with {resume})"
        return EXIT_INCOMPLETE, "run incomplete: " + "; ".join(why) + hint
    if summary.get("dlq"):
        return EXIT_DLQ, f"{summary['dlq']} requests of the run are in the DLQ (fleet dlq {summary['spider']} list)"
    rejected = []
    if summary.get("rejected"):
        rejected.append(f"{summary['rejected']} input URLs were rejected (one line each above)")
    if summary.get("discovered_rejected"):
        rejected.append(f"{summary['discovered_rejected']} requests the spider yielded could not be queued "
                        "(request_rejected in the worker logs)")
    if rejected:
        return EXIT_ARGS, "; ".join(rejected) + "; the rest finished"
    return 0, ""

"""One run's state in Redis for its manifest: how much of its work is still queued or parked, and the
tallies its workers flushed.

Why apart from :class:`scraper.queue.client.FleetQueue`: READY, IN-FLIGHT, DELAYED and PARKED are per
spider, not per run; a manifest has to say how many of *this run's* requests are in them, which means
reading the queued envelopes (their ``run`` field). That costs a scan of the backlog, fine for a manifest
written every few seconds by ``fleet run`` or on demand by ``fleet runs --refresh``, never for the worker's
hot path, so it lives here and not among the queue transitions.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from scraper.queue.keys import LEASED, Keys

__all__ = ["BACKLOG_LIMIT", "run_backlog", "run_tally"]

#: Beyond this many queued + parked entries (all runs of the spider), the backlog is not read per run:
#: the manifest then reports the spider's counts and says so (``scope: spider``).
BACKLOG_LIMIT = 200_000
_CHUNK = 1000


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _run_of(raw: Any) -> str | None:
    try:
        data = json.loads(raw)
    except (ValueError, TypeError):
        return None  # an entry that is not JSON is the DLQ's business when leased, not the manifest's
    return data.get("run") if isinstance(data, dict) else None


async def run_backlog(client: Any, keys: Keys, run: str, limit: int = BACKLOG_LIMIT) -> dict[str, int] | None:
    """How many of ``run``'s requests are ready, inflight, delayed and parked; None when the spider's
    backlog holds more than ``limit`` entries. Read in chunks, not atomically: while workers run, an
    entry moving between sets may be counted in neither or both (exact once the run has stopped)."""
    domains = [_s(d) for d in await client.smembers(keys.parkdom)]
    sets = {"ready": [keys.ready], "inflight": [keys.inflight], "delayed": [keys.delayed],
            "parked": [keys.parked(d) for d in domains]}
    pipe = client.pipeline(transaction=False)
    for names in sets.values():
        for key in names:
            pipe.zcount(key, *LEASED)  # every entry (READY's scores are finite too), but IN-FLIGHT's mark
    if sum(int(n) for n in await pipe.execute()) > limit:
        return None
    out: dict[str, int] = {}
    for kind, names in sets.items():
        n = 0
        for key in names:
            start = 0
            while True:
                ids = await client.zrange(key, start, start + _CHUNK - 1)
                if not ids:
                    break
                start += len(ids)
                n += sum(1 for raw in await client.hmget(keys.env, ids) if raw is not None and _run_of(raw) == run)
                if len(ids) < _CHUNK:
                    break
        out[kind] = n
    return out


async def run_tally(client: Any, keys: Keys, run: str) -> dict[str, int]:
    """The counts the run's workers flushed (scraper.worker.tally); {} when none (or expired)."""
    out: dict[str, int] = {}
    for k, v in (await client.hgetall(keys.tally(run))).items():
        with contextlib.suppress(ValueError):
            out[_s(k)] = int(v)
    return out

"""Object-store health as the worker sees it: which write failures are the store's, and for how long.

Why a module of its own: a failed write is either the object's own fault (a key the store refuses, a
file where one directory must go) or the store's (down, no credentials, disk full or read-only). The
first fails that request only; the second must neither burn the retry budget of every request in
flight nor go on forever. The runtime tells them apart with one probe write (:func:`probe_key`) and
keeps the outage's clock and reason here, so that it can end the worker with exit 3 after
FLEET_STORE_OUTAGE_MAX, the way a Redis outage ends it after FLEET_REDIS_OUTAGE_MAX.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

from scraper.infra.redact import redact
from scraper.store.backends import scrub_secrets

__all__ = ["StoreOutage", "probe_key", "reason"]

MAX_REASON = 300  # characters of a reason on a log line or in the exit message

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def reason(exc: BaseException) -> str:
    """One line saying what failed, safe to log: credentials in URLs and AWS secrets from the
    environment are replaced by ``***``, and a hostile key cannot make it long."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(redact(scrub_secrets(text)).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def probe_key(worker_id: str) -> str:
    """Where a worker's probe write goes: one key per worker, always a valid key.

    FLEET_WORKER_ID is free text; a '/' or '..' in it must not make every probe fail (the worker
    would then think the store is down until it gives up)."""
    safe = _UNSAFE.sub("_", worker_id)[:64].strip(".") or "worker"
    if safe != worker_id:
        safe += "-" + hashlib.sha256(worker_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"_fleet/probe/{safe}"


class StoreOutage:
    """The clock, reason and counts of the current store outage (one at a time; none when healthy)."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit  # FLEET_STORE_OUTAGE_MAX
        self.clock = clock
        self.since: float | None = None
        self.reason = ""
        self.outages = 0  # outages so far (this worker)
        self.probes_failed = 0  # probe writes failed in the current outage

    @property
    def down(self) -> bool:
        return self.since is not None

    def begin(self, exc: BaseException) -> bool:
        """The store failed a probe: True if this starts an outage (log it), False if one is going on."""
        self.reason = reason(exc)
        if self.since is not None:
            self.probes_failed += 1
            return False
        self.since = self.clock()
        self.outages += 1
        self.probes_failed = 1
        return True

    def elapsed(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since

    def exceeded(self) -> bool:
        """The outage has lasted longer than the limit: the worker gives up (exit 3)."""
        return self.since is not None and self.elapsed() > self.limit

    def end(self) -> float:
        """The store is back; returns how long it was down."""
        down = self.elapsed()
        self.since = None
        self.probes_failed = 0
        return down

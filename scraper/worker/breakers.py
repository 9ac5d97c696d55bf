"""Drift breakers as the worker sees them: which domains not to speculate into, and the alert text.

The breaker itself (the C-rate window, open / closed, parked requests) lives in Redis (COMMIT and DRIFT
scripts); this component reacts to the events those scripts return: it stops speculative fetches into a
domain that is held or behind an open breaker (Redis decides when those are fetched), and sends the
alert an operator acts on, with the commands to check a fix, reset and resume.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from scraper.infra.redact import redact_request_url
from scraper.worker.alerts import Alerter

__all__ = ["NOSPEC_SECONDS", "Breakers", "closed_alert", "opened_alert"]

NOSPEC_SECONDS = 10.0  # no speculative fetch into a domain for this long after Redis refused a claim there


def closed_alert(spider: str, domain: str) -> dict[str, Any]:
    return {
        "text": f":white_check_mark: Fleet breaker closed for {spider} on {domain}; parked requests released.",
        "event": "breaker_closed", "spider": spider, "domain": domain,
    }


def opened_alert(spider: str, domain: str, event: str, rate: float | None, window: int,
                 info: dict[str, Any]) -> dict[str, Any]:
    """The breaker_opened alert: what is missing, sample URLs and evidence, and what to run next.
    ``info`` is the breaker's entry from FleetQueue.breakers()."""
    samples = info.get("samples", [])
    # redacted (a chat channel): no user:pass@ of a sample URL, in the list or in the replay command
    urls = [redact_request_url(u) if isinstance(u, str) else u for u in (s_.get("url") for s_ in samples)]
    missing = sorted({f for s_ in samples for f in s_.get("missing", [])})
    evidence = [s_.get("evidence_key") for s_ in samples if s_.get("evidence_key")]
    replay = f"fleet replay {spider} --url {urls[-1]}" if urls else f"fleet replay {spider} --key <raw key>"
    reset = f"fleet breakers reset {spider} {domain}"
    resume = f"fleet run {spider} --resume <RUN>"
    return {
        "text": (f":rotating_light: Fleet drift breaker {'re-' if event == 'reopened' else ''}opened for "
                 f"spider {spider} on {domain}: C rate {rate} over the last {window} item pages; "
                 f"missing fields: {', '.join(missing) or 'all items'}. "
                 f"Requests are parked, not lost. Check a fix with `{replay}`, then `{reset}`; "
                 f"where no worker is running (cron), finish the run with `{resume}`."),
        "event": "breaker_opened", "spider": spider, "domain": domain, "reopened": event == "reopened",
        "rate": rate, "window": window, "sample_urls": urls, "missing_fields": missing,
        "evidence_keys": evidence, "replay_command": replay, "reset_command": reset, "resume_command": resume,
        "open_until": info.get("open_until"),
    }


class Breakers:
    """Breaker events from Redis -> logs, stats, alerts, and the no-speculation map."""

    def __init__(self, alerter: Alerter, stats: Any, log: Any, spawn: Callable[[Any], None]) -> None:
        self.alerter = alerter
        self.stats = stats
        self.log = log
        self.spawn = spawn
        self.spider = "?"
        self.breakers: Callable[[], Awaitable[dict[str, dict[str, Any]]]] | None = None  # FleetQueue.breakers
        # domain -> monotonic time until which no speculative fetch goes there (held, breaker)
        self.nospec: dict[str, float] = {}

    def may_speculate(self, domain: str) -> bool:
        until = self.nospec.get(domain)
        if until is None:
            return True
        if until > time.monotonic():
            return False  # the domain is held or behind a breaker: Redis decides when it is fetched
        del self.nospec[domain]
        return True

    def pause(self, domain: str, seconds: float = NOSPEC_SECONDS) -> None:
        self.nospec[domain] = time.monotonic() + seconds

    def event(self, domain: str, event: str, extra: dict[str, Any]) -> None:
        if event not in {"opened", "reopened", "closed"}:
            return
        spider = self.spider
        window = str(extra.get("window", ""))
        rate = round(window.count("C") / len(window), 3) if window else None
        if event == "closed":
            self.nospec.pop(domain, None)
            self.stats.inc_value("fleet/breaker/closed")
            self.log.warning("breaker_closed", domain=domain)
            self.alerter.send(closed_alert(spider, domain))
            return
        self.pause(domain)
        self.stats.inc_value("fleet/breaker/opened")
        self.spawn(self._alert_opened(spider, domain, event, rate, len(window)))

    async def _alert_opened(self, spider: str, domain: str, event: str, rate: float | None, window: int) -> None:
        assert self.breakers is not None
        info = (await self.breakers()).get(domain, {})
        alert = opened_alert(spider, domain, event, rate, window, info)
        self.log.warning(
            "breaker_opened", domain=domain, reopened=event == "reopened", rate=rate, window=window,
            sample_urls=alert["sample_urls"], missing_fields=alert["missing_fields"],
            evidence_keys=alert["evidence_keys"], open_until=info.get("open_until"),
        )
        self.alerter.send(alert)

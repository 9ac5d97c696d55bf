"""The failure applier: carries a request's failure out in Redis (nack, DLQ, park) with its evidence.

What to do is decided elsewhere (scraper.policy.decide.decide, pure); this module only does it, in the order
that keeps the ledger honest: wait for a speculative lease's confirmation (settle nothing that is not
ours), record the attempt in the envelope's history, ban the proxy, hold the domain, then nack or DLQ,
and only then forget the request.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from scrapy.http import Response
from scrapy.settings import SETTINGS_PRIORITIES

from scraper.infra.config import FleetConfig
from scraper.infra.redact import redact_data
from scraper.policy.decide import DEAD, Budgets, decide, request_budgets
from scraper.policy.taxonomy import C, D, FailureClass, Verdict
from scraper.queue import pagemethods
from scraper.store.objects import ObjectWriter, item_to_dict
from scraper.worker.breakers import Breakers
from scraper.worker.catalog import RETRY_DISABLED
from scraper.worker.health import Health
from scraper.worker.ledger import LeaseState, Ledger
from scraper.worker.project import PRIORITY as PROJECT_PRIORITY
from scraper.worker.proxies import ProxyPool
from scraper.worker.queueport import QueuePort

__all__ = ["EVIDENCE_HEADERS", "FailureApplier", "now_iso", "spider_retry_times"]

EVIDENCE_HEADERS = ("content-type", "server", "retry-after", "cf-mitigated", "location", "cf-ray",
                    "content-encoding", "content-length")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def spider_retry_times(settings: Any) -> int | None:
    """``RETRY_TIMES`` as a spider's ``custom_settings`` or its Scrapy project's settings module set it (0 when
    they set ``RETRY_ENABLED = False``): the A budget (FLEET_RETRY_MAX) of that spider's requests, as
    RetryMiddleware's users expect. A FLEET_RETRY_MAX set in the environment beats the project's module, not
    the spider's own setting (docs/architecture.md, Configuration). None: FLEET_RETRY_MAX."""
    if settings.getbool(RETRY_DISABLED):  # RETRY_ENABLED = False, recorded by scraper.worker.catalog
        return 0
    prio = settings.getpriority("RETRY_TIMES") or 0
    if prio >= SETTINGS_PRIORITIES["spider"] or (prio >= PROJECT_PRIORITY and "FLEET_RETRY_MAX" not in os.environ):
        return max(0, int(settings.getint("RETRY_TIMES")))
    return None


class FailureApplier:
    """Nack (A/B within budget), DLQ (D, exhausted, bad envelopes) and park (C) a request."""

    def __init__(self, config: FleetConfig, worker_id: str, ledger: Ledger, health: Health, breakers: Breakers,
                 writer: ObjectWriter, in_pool: Callable[..., Awaitable[Any]],
                 confirmed: Callable[[LeaseState], Awaitable[bool]], stats: Any, log: Any,
                 retry_times: int | None = None) -> None:
        self.config = config
        self.worker_id = worker_id
        self.ledger = ledger
        self.health = health
        self.breakers = breakers
        self.writer = writer
        self.in_pool = in_pool
        self.confirmed = confirmed
        self.stats = stats
        self.log = log
        self.budgets = Budgets(config.retry_max if retry_times is None else retry_times, config.rotate_max,
                               config.retry_base, config.retry_cap)
        self.queue: QueuePort | None = None  # set when the spider opens
        self.proxies: ProxyPool = ProxyPool([])

    async def settle(self, state: LeaseState, verdict: Verdict, response: Response | None) -> None:
        """Class A, B or D: count the attempt, then retry (DELAYED) or DLQ as scraper.policy.decide decides."""
        queue = self.queue
        assert queue is not None
        if not await self.confirmed(state):
            return
        env = state.env
        cls = verdict.cls
        self.stats.inc_value(f"fleet/outcome/{cls}/{verdict.reason}")  # worker metrics (scraper.worker.exporter)
        env.attempts[cls] = env.attempts.get(cls, 0) + 1
        env.history.append({"cls": cls, "reason": verdict.reason, "at": now_iso(), "worker": self.worker_id})
        env.history = env.history[-20:]
        proxy_id = state.fetch.proxy_id
        env.history[-1]["proxy"] = proxy_id
        if verdict.detail:
            env.history[-1]["detail"] = verdict.detail[:300]
        detail = f"{verdict.reason}: {verdict.detail}" if verdict.detail else verdict.reason
        status = verdict.status
        # dont_retry, max_retry_times: the spider's word on the site's failures, not on Fleet's own (a store
        # outage, a stall)
        internal = verdict.reason.startswith(("store:", "watchdog:"))
        budgets = self.budgets if internal else request_budgets(self.budgets, env.meta)
        decision = decide(cls, verdict.reason, status, env.attempts, budgets, retry_after=verdict.retry_after,
                          proxied=bool(proxy_id and self.proxies))
        if proxy_id and response is None and verdict.reason.startswith("net:") and verdict.cls != D and self.proxies:
            # no answer through it (not a store or watchdog failure after one, nor a URL the browser itself
            # refuses, class D): it loses its preference, as an answer at the download timeout would
            timeout = state.request.meta.get("download_timeout") if state.request is not None else None
            self.proxies.failed(proxy_id, env.domain, float(timeout or 0) * 1000)
        if decision.ban_proxy:
            assert proxy_id is not None
            until = await self.health.redis_retry(lambda: self.proxies.ban(proxy_id, env.domain))
            self.stats.inc_value("fleet/proxy/banned")
            self.stats.inc_value(f"fleet/proxy/banned/{proxy_id}")  # per proxy id, for the worker metrics
            self.log.info("proxy_banned", proxy=proxy_id, domain=env.domain, cooling_until=round(until or 0.0, 3))
        if decision.action == DEAD:
            await self.dead(state, decision.reason, detail, response=response, cls=decision.cls)
            return
        now = time.time()
        hold_until = 0.0
        if decision.hold_domain and env.domain:
            # the domain says "slow down": back off the whole domain, fleet-wide, one step per burst
            hold_until = await self.health.redis_retry(
                lambda: queue.hold(env.domain, base=self.config.retry_base, cap=self.config.retry_cap,
                                   rnd=random.random(), min_wait=verdict.retry_after or 0.0)
            ) or 0.0
            if hold_until:
                self.breakers.pause(env.domain, max(0.0, float(hold_until) - now))
        delay = max(decision.delay, hold_until - now)
        due = time.time() + delay
        await self.health.redis_retry(lambda: queue.nack(state.id, state.lease.token, env, due))
        self.ledger.forget(state)
        self.stats.inc_value("fleet/retried")
        self.log.info(
            "request_delayed", run=env.run, fp=env.fp, cls=cls, reason=verdict.reason,
            delay_s=round(delay, 3), due=due, attempts=env.attempts,
        )

    async def defer(self, state: LeaseState, until: float) -> None:
        """Back to DELAYED without using any budget (e.g. every proxy cooling)."""
        queue = self.queue
        assert queue is not None
        if not await self.confirmed(state):
            return
        await self.health.redis_retry(lambda: queue.nack(state.id, state.lease.token, state.env, until))
        self.ledger.forget(state)

    async def drift(self, state: LeaseState, reason: str, missing: tuple[str, ...] | list[str]) -> None:
        """Class C: keep the evidence, feed the domain's breaker, and park the request (no DONE)."""
        queue = self.queue
        assert queue is not None
        if not await self.confirmed(state):
            return
        env = state.env
        self.stats.inc_value(f"fleet/class/{C}")
        self.stats.inc_value(f"fleet/outcome/{C}/{reason}")
        self.log.info("request_classified", run=env.run, fp=env.fp, cls=C, reason=reason,
                      missing=list(missing), attempt=state.lease.deliveries)
        raw_key = evidence_key = None
        try:
            if state.fetch.body:
                raw_key = await self.in_pool(self.writer.write_raw, env.spider, env.run, env.fp, state.fetch.body)
            evidence = {
                "class": C, "reason": reason, "missing": list(missing), "url": env.url, "fp": env.fp,
                "run": env.run, "spider": env.spider, "callback": env.callback or "parse",
                # meta's secret-named fields (a password for a browser context…) never go to evidence
                # and its page methods by name (their arguments are what the spider typed: pagemethods.shown)
                "cb_kwargs": env.cb_kwargs, "meta": redact_data(pagemethods.shown(env.meta)),
                "status": state.fetch.status,
                "raw_key": raw_key,
                "content_type": (state.fetch.ctype or b"").decode("latin-1") or None,
                "worker": self.worker_id, "at": now_iso(),
                "items_sample": [item_to_dict(i) for i in state.out.items[:3]],
            }
            evidence_key = await self.in_pool(self.writer.write_evidence, env.spider, env.run, C, env.fp, evidence)
        except Exception as exc:
            self.log.warning("evidence_write_failed", error=type(exc).__name__, cls=C)
        sample = {"url": env.url, "missing": list(missing), "reason": reason, "evidence_key": evidence_key,
                  "raw_key": raw_key, "run": env.run}
        res = await self.health.redis_retry(
            lambda: queue.drift(state.id, state.lease.token, env.domain, sample, env.run))
        self.ledger.forget(state)
        if res and res[0] == "cancelled":  # `fleet cancel` marked the run meanwhile: forgotten, not parked
            self.stats.inc_value("fleet/cancelled_dropped")
            self.log.info("request_cancelled", run=env.run, fp=env.fp)
            return
        self.stats.inc_value("fleet/parked")
        self.log.info("request_parked", run=env.run, fp=env.fp, domain=env.domain, reason=reason)
        if res:
            event, window = res
            self.breakers.event(env.domain, event, {"window": window, "sample": sample})

    async def dead(self, state: LeaseState, reason: str, detail: str, *, response: Response | None = None,
                   raw: bytes | None = None, cls: FailureClass = D) -> None:
        """To the DLQ with evidence (status, chosen headers, body hash; the envelope or the raw entry).
        ``cls``: the class it failed with (A or B for an exhausted budget; D otherwise), for the logs."""
        queue = self.queue
        assert queue is not None
        if not await self.confirmed(state):
            return
        env = state.env
        fields: dict[str, str] = {
            "class": D,
            "reason": reason,
            "detail": detail[:500],
            "url": env.url,
            "run": env.run,
            "fp": env.fp,
            "attempts": json.dumps(env.attempts),
            "proxies": json.dumps(sorted({h["proxy"] for h in env.history if h.get("proxy")})),
            "worker": self.worker_id,
            "at": now_iso(),
        }
        if response is not None:
            fields["status"] = str(response.status)
            fields["headers"] = json.dumps(
                {h: (response.headers.get(h) or b"").decode("latin-1") for h in EVIDENCE_HEADERS
                 if response.headers.get(h)}
            )
            fields["body_sha256"] = hashlib.sha256(response.body).hexdigest()
            fields["body_size"] = str(len(response.body))
        if raw is not None:
            fields["raw"] = raw[:4096].decode("utf-8", "replace")
        else:
            fields["envelope"] = env.dumps() if env.url else ""
        if env.url and env.fp:
            try:
                evidence = {k: v for k, v in fields.items() if k != "envelope"}
                key = await self.in_pool(self.writer.write_evidence, env.spider, env.run, "D", env.fp, evidence)
                fields["evidence_key"] = key
            except Exception as exc:  # evidence is best effort; the DLQ entry is the record
                self.log.warning("evidence_write_failed", error=type(exc).__name__, cls=cls)
        dead = await self.health.redis_retry(
            lambda: queue.dead(state.id, state.lease.token, fields, maxlen=self.config.dlq_maxlen))
        self.ledger.forget(state)
        if not dead:  # the lease was lost (another worker has it) or its run was cancelled: no DLQ entry
            self.log.info("request_not_dead", run=env.run, fp=env.fp, reason=reason)
            return
        self.stats.inc_value("fleet/dlq")
        self.log.warning("request_dead", run=env.run, fp=env.fp, reason=reason, url=env.url)


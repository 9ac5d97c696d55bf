"""Fleet simulator (issue #18 item 6) and AOF bytes per page at two run sizes (item 2).

K simulated workers (asyncio tasks, no Scrapy engine, no HTTP) drive FleetQueue as a worker's feeder and
committer do: LEASE a batch, "fetch" instantly, a null object write, then one COMMIT per batch recording
DONE, queueing each page's one child (until the run has its pages) and acking. A worker whose LEASE finds
READY empty waits for a message on its wake channel (or a 0.5 s poll), as the feeder does. Redis is one
private redis-server with AOF (everysec, no rewrite). Printed: pages/s, Redis CPU per page (INFO
used_cpu_sys + used_cpu_user delta), commands per page (INFO commandstats, scripts' inner commands
included), LEASE calls per page, AOF bytes per page (aof_current_size delta).

``BENCH_SIM=1 python -m tests.bench.run`` runs this section alone (~1 min); ``BENCH_SIM_PAGES`` pages per
K (default 20,000), ``BENCH_SIM_BIG`` the large run size for the AOF figure (default 1,000,000)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from scrapy import Request

from scraper.queue.client import Commit, FleetQueue, Lease
from scraper.queue.envelope import Envelope
from scraper.queue.keys import new_id
from tests.bench.procs import RedisServer

__all__ = ["aof_per_page", "simulate"]

SPIDER = "sim"
BATCH = 8


def _env(run: str, url: str) -> Envelope:
    return Envelope.from_request(Request(url), spider_name=SPIDER, run=run)


def _redis_stats(r: redis.Redis) -> dict[str, float]:
    cpu = r.info("cpu")
    cmds = r.info("commandstats")
    calls = sum(int(v["calls"]) for k, v in cmds.items() if k not in ("cmdstat_info", "cmdstat_config"))
    return {
        "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "calls": calls,
        "aof": int(r.info("persistence").get("aof_current_size", 0)),
    }


async def _crawl(url: str, run: str, k: int, pages: int, fanout: int = 1, claim: bool = False) -> dict[str, Any]:
    """K workers crawl ``pages`` pages of ``run`` (K start entries seeded; each page yields ``fanout``
    children until the run has ``pages``: 1 is a chain per worker, where every LEASE finds about one
    entry; more is a site whose pages link to several new ones, where batches fill). ``claim``: each commit
    claims its first child, as Fleet's worker does for the page it already fetches speculatively (page N+1
    of a pagination chain, ``Commit.claim``): the child comes back leased in COMMIT's reply, no LEASE."""
    clients = [aioredis.Redis.from_url(url, socket_timeout=30) for _ in range(k)]
    queues = [FleetQueue(c, SPIDER) for c in clients]
    await queues[0].seed(run, [_env(run, f"https://sim.example/{run}/start/{i}") for i in range(k)])
    state = {"queued": k, "done": 0, "lease_calls": 0}
    finished = asyncio.Event()

    async def worker(i: int) -> None:
        q, wid = queues[i], f"sim-w{i}"
        chan = q.keys.wake_channel(wid) if hasattr(q.keys, "wake_channel") else q.keys.wake
        sub = clients[i].pubsub(ignore_subscribe_messages=True)
        await sub.subscribe(chan)
        held: list[Lease] = []  # children claimed by this worker's last COMMIT
        try:
            while not finished.is_set():
                mine, held = held, []
                if len(mine) < BATCH:
                    batch = await q.lease(BATCH - len(mine), worker=wid, lease_seconds=60)
                    state["lease_calls"] += 1
                    mine += batch.leased
                    if not mine:
                        if batch.remaining == 0:  # as the feeder: wait for news of work, or the idle poll
                            with contextlib.suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(sub.get_message(timeout=0.5), timeout=0.6)
                        continue
                commits = []
                for lease in mine:
                    env = Envelope.loads(lease.raw)
                    kids = []
                    for _ in range(fanout):
                        if state["queued"] < pages:
                            state["queued"] += 1
                            kids.append(_env(run, f"https://sim.example/{run}/p/{state['queued']}"))
                    await asyncio.sleep(0)  # the null object write
                    ids = [new_id() for _ in kids]
                    commits.append(
                        Commit(
                            lease.id,
                            lease.token,
                            run,
                            env.fp,
                            kids,
                            domain="sim.example",
                            claim=1 if claim and kids else 0,
                            ids=ids,
                        )
                    )
                reply = await q.commit_claiming(commits, worker=wid if claim else "", lease_seconds=60)
                for c, (token, dlv) in zip(commits, reply.claims, strict=True):
                    if token:
                        held.append(Lease(c.ids[0], c.discovered[0].dumps().encode(), dlv, token))
                state["done"] += len(commits)
                if state["done"] >= pages:
                    finished.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.aclose()

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(i)) for i in range(k)]
    await finished.wait()
    wall = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.aclose()
    return {"pages": state["done"], "wall_s": wall, "lease_calls": state["lease_calls"]}


#: the simulated crawls: (name, children per page, whether a commit claims its first child)
MODES = (("chain", 1, False), ("chain+claim", 1, True), ("fan-out 4", 4, True))


def simulate(
    srv: RedisServer,
    ks: tuple[int, ...] = (1, 8, 64),
    pages: int = 20_000,
    modes: tuple[tuple[str, int, bool], ...] = MODES,
) -> list[dict[str, Any]]:
    r = srv.client()
    out = []
    for (mode, fanout, claim), k in itertools.product(modes, ks):
        r.flushall()
        r.config_resetstat()
        before = _redis_stats(r)
        res = asyncio.run(_crawl(srv.url, f"k{k}", k, pages, fanout, claim))
        after = _redis_stats(r)
        n = res["pages"]
        out.append(
            {
                "k": k,
                "mode": mode,
                "pages": n,
                "pages_per_s": n / res["wall_s"],
                "redis_cpu_us_per_page": (after["cpu"] - before["cpu"]) / n * 1e6,
                "cmds_per_page": (after["calls"] - before["calls"]) / n,
                "lease_calls_per_page": res["lease_calls"] / n,
                "aof_bytes_per_page": (after["aof"] - before["aof"]) / n,
            }
        )
    r.close()
    return out


def aof_per_page(
    srv: RedisServer, sizes: tuple[int, ...] = (10_000, 1_000_000), pages: int = 5_000, k: int = 8
) -> list[dict[str, Any]]:
    """AOF bytes per crawled page on top of a run already holding ``size`` SEEN URLs."""
    r = srv.client()
    out = []
    for size in sizes:
        r.flushall()
        run = f"big{size}"

        async def seed(size: int = size, run: str = run) -> None:
            c = aioredis.Redis.from_url(srv.url, socket_timeout=120)
            q = FleetQueue(c, SPIDER)
            await q.seed_entries(
                run, ((e.dumps(), e.fp) for e in (_env(run, f"https://sim.example/seeded/{i}") for i in range(size)))
            )
            await c.delete(q.keys.ready, q.keys.env)  # only SEEN stays: the crawl below is the measured part
            await c.aclose()

        asyncio.run(seed())
        before = _redis_stats(r)
        res = asyncio.run(_crawl(srv.url, run, k, pages))
        after = _redis_stats(r)
        out.append(
            {
                "seen_before": size,
                "pages": res["pages"],
                "aof_bytes_per_page": (after["aof"] - before["aof"]) / res["pages"],
            }
        )
    r.close()
    return out


def run_section(tmp: Path, pages: int, big: int) -> dict[str, Any]:
    srv = RedisServer(tmp / "redis-sim", aof=True).start()
    try:
        return {
            "sim": simulate(srv, pages=pages),
            "aof": aof_per_page(srv, sizes=(10_000, big)),
            "shards": "not implemented",
        }
    finally:
        srv.stop()


def table(res: dict[str, Any]) -> Any:
    """The section as a rich Table (run.py prints it)."""
    from rich.table import Table

    t = Table(title="Fleet simulator: one Redis, K simulated workers (no Scrapy, no HTTP); AOF everysec")
    for col in ("K", "crawl", "pages", "pages/s", "Redis CPU µs/page", "cmds/page", "LEASE calls/page", "AOF B/page"):
        t.add_column(col, justify="right")
    for r in res["sim"]:
        t.add_row(
            str(r["k"]),
            r["mode"],
            f"{r['pages']:,}",
            f"{r['pages_per_s']:,.0f}",
            f"{r['redis_cpu_us_per_page']:.0f}",
            f"{r['cmds_per_page']:.1f}",
            f"{r['lease_calls_per_page']:.2f}",
            f"{r['aof_bytes_per_page']:,.0f}",
        )
    for a in res["aof"]:
        t.add_row(
            f"8, run of {a['seen_before']:,} SEEN",
            "chain",
            f"{a['pages']:,}",
            "",
            "",
            "",
            "",
            f"{a['aof_bytes_per_page']:,.0f}",
        )
    t.caption = f"shards: {res['shards']}"
    return t

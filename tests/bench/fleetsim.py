"""Fleet simulator (issue #18 item 6) and AOF bytes per page at two run sizes (item 2).

K simulated workers (asyncio tasks, no Scrapy engine, no HTTP) drive FleetQueue as a worker's feeder and
committer do: LEASE a batch, "fetch" instantly, a null object write, then one COMMIT per batch recording
DONE, queueing each page's one child (until the run has its pages) and acking. A worker whose LEASE finds
READY empty waits for a message on its wake channel (or a 0.5 s poll), as the feeder does. Redis is one
private redis-server with AOF (everysec, no rewrite). Printed: pages/s, Redis CPU per page (INFO
used_cpu_sys + used_cpu_user delta), commands per page (INFO commandstats, scripts' inner commands
included), LEASE calls per page, AOF bytes per page (aof_current_size delta).

Cluster mode (issue #18 item 6, ``BENCH_SIM_CLUSTER``): the same crawls against a 3-primary Redis Cluster
(tests/cluster.py, AOF everysec, no rewrite), each simulated worker on a ``ShardedQueue(client, SPIDER, 3)``
over redis-py's cluster client (``redisio.client``). Each shard's hash tag puts it on a primary of its own
(``keys.shard_tag``). Per primary: Redis CPU, commands and AOF deltas; per shard: its pages (the DONE
count of ``Keys(SPIDER, i, 3).done(run)``). LEASE calls are counted client-side: calls of the worker to
``ShardedQueue.lease`` and calls of ShardedQueue to its parts' ``lease`` (one LEASE script each).

``BENCH_SIM=1 python -m tests.bench.run`` runs this section alone (~1 min); ``BENCH_SIM_PAGES`` pages per
K (default 20,000), ``BENCH_SIM_BIG`` the large run size for the AOF figure (default 1,000,000),
``BENCH_SIM_CLUSTER=0`` leaves the cluster mode out."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from scraper.queue import redisio, seenset
from scraper.queue.client import Commit, FleetQueue, Lease
from scraper.queue.envelope import Envelope
from scraper.queue.keys import Keys, new_id
from scraper.queue.records import LeaseBatch
from scraper.queue.shards import ShardedQueue
from tests.bench.procs import RedisServer, aof_size, cpu_seconds, redis_binary

__all__ = ["aof_per_page", "simulate", "simulate_cluster", "start_cluster"]

SPIDER = "sim"
BATCH = 8
SHARDS = 3


def _env(run: str, url: str) -> Envelope:
    """A plain GET, as ``fleet seed`` makes it (``Envelope.for_url``: the same JSON and fingerprint as
    from a Scrapy Request, without building one: the simulator measures the queue, not Scrapy)."""
    return Envelope.for_url(url, spider_name=SPIDER, run=run)


#: the bench's own commands (and a cluster client's CLUSTER SLOTS at start-up), left out of the counts
_NOT_COUNTED = ("cmdstat_info", "cmdstat_config", "cmdstat_cluster")


def _redis_stats(r: redis.Redis) -> dict[str, float]:
    cmds = r.info("commandstats")
    calls = sum(int(v["calls"]) for k, v in cmds.items() if k not in _NOT_COUNTED)
    return {
        "cpu": cpu_seconds(r.info("cpu")),
        "calls": calls,
        "evalsha": int(cmds.get("cmdstat_evalsha", {}).get("calls", 0)),
        "aof": aof_size(r),
    }


def _count_part_leases(q: ShardedQueue, counts: list[int]) -> None:
    """Count each shard's LEASE script calls (``counts[i]`` for shard i) made through ``q``."""
    for i, part in enumerate(q.parts):
        orig = part.lease

        async def lease(n: int, *, _i: int = i, _orig: Any = orig, **kw: Any) -> LeaseBatch:
            counts[_i] += 1
            batch: LeaseBatch = await _orig(n, **kw)
            return batch

        part.lease = lease  # type: ignore[method-assign]


async def _crawl(
    url: str, run: str, k: int, pages: int, fanout: int = 1, claim: bool = False, shards: int = 0,
    ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """K workers crawl ``pages`` pages of ``run`` (K start entries seeded; each page yields ``fanout``
    children until the run has ``pages``: 1 is a chain per worker, where every LEASE finds about one
    entry; more is a site whose pages link to several new ones, where batches fill). ``claim``: each commit
    claims its first child, as Fleet's worker does for the page it already fetches speculatively (page N+1
    of a pagination chain, ``Commit.claim``): the child comes back leased in COMMIT's reply, no LEASE.
    ``shards``: each worker on a ``ShardedQueue`` of that many shards over ``redisio.client`` (a cluster
    client when ``url`` is a cluster node); 0: a ``FleetQueue`` on one plain Redis. ``ready``: called once
    the cluster clients know the cluster (CLUSTER SLOTS, COMMAND: K clients' start-up, not the crawl's), before
    anything is seeded."""
    queues: list[FleetQueue] = []
    part_leases = [0] * max(1, shards)
    if shards:
        clients = [redisio.client(url, socket_timeout=30) for _ in range(k)]
        for c in clients:
            sq = ShardedQueue(c, SPIDER, shards)
            _count_part_leases(sq, part_leases)
            queues.append(sq)
        await asyncio.gather(*(c.initialize() for c in clients))  # type: ignore[attr-defined]
    else:
        clients = [redisio.client(url, socket_timeout=30) for _ in range(k)]  # the worker's client
        queues = [FleetQueue(c, SPIDER) for c in clients]
    if ready is not None:
        ready()
    await queues[0].seed(run, [_env(run, f"https://sim.example/{run}/start/{i}") for i in range(k)])
    state = {"queued": k, "done": 0, "lease_calls": 0}
    finished = asyncio.Event()

    async def worker(i: int) -> None:
        q, wid = queues[i], f"sim-w{i}"
        sub = clients[i].pubsub(ignore_subscribe_messages=True)
        await sub.subscribe(*q.wake_channels(wid))
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
                    ids = [new_id(e.fp) for e in kids]  # as the worker: in its fingerprint's shard
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

    async def redis_cpu() -> float:  # one Redis only: the busy share over the crawl's own window
        return cpu_seconds(await clients[0].info("cpu") if not shards else {})

    r0 = await redis_cpu()
    t0, c0 = time.perf_counter(), time.process_time()
    tasks = [asyncio.ensure_future(worker(i)) for i in range(k)]
    await finished.wait()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    redis_s = await redis_cpu() - r0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.aclose()
    if not shards:
        part_leases = [state["lease_calls"]]
    return {"pages": state["done"], "wall_s": wall, "cpu_s": cpu, "redis_cpu_s": redis_s,
            "lease_calls": state["lease_calls"], "part_leases": part_leases}


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
                # which side sets the pace: the simulator is one Python process (all K workers), Redis one
                # core; at 100 % the process is the ceiling, not Redis (whose capacity is 1e6 / µs per page)
                "sim_cpu_us_per_page": res["cpu_s"] / n * 1e6,
                "redis_busy": res["redis_cpu_s"] / res["wall_s"],  # over the crawl's window, as sim_busy
                "sim_busy": res["cpu_s"] / res["wall_s"],
                "cmds_per_page": (after["calls"] - before["calls"]) / n,
                "lease_calls_per_page": res["lease_calls"] / n,
                "aof_bytes_per_page": (after["aof"] - before["aof"]) / n,
            }
        )
    r.close()
    return out


async def _done_as_seen(c: aioredis.Redis, seen: str, done: str) -> None:
    """DONE made a copy of SEEN (its bucket strings, count and deadline: lua/_helpers.lua's encoding)."""
    info = await c.hgetall(seen)
    got = await seenset.buckets(c, seen)
    exp = int(info.get(b"exp") or 0)
    async with c.pipeline(transaction=False) as pipe:
        for b, members in got.items():
            pipe.set(f"{done}:{b}", members, exat=exp or None)
        pipe.hset(done, mapping={k.decode(): v for k, v in info.items()})
        if exp:
            pipe.expireat(done, exp)
        await pipe.execute()


def aof_per_page(
    srv: RedisServer, sizes: tuple[int, ...] = (10_000, 1_000_000), pages: int = 5_000, k: int = 8
) -> list[dict[str, Any]]:
    """AOF bytes per crawled page on top of a run that has crawled ``size`` URLs: its SEEN and DONE sets hold
    them (READY and the envelopes emptied). Why DONE too: in a run of that size most URLs seen are done, so
    a page's DONE add grows a bucket (``APPEND``) as its SEEN add does, where a DONE set left empty made about
    half of them a new bucket (a ``SET`` with the set's deadline, ~27 bytes more) and measured a run's first
    pages rather than its size."""
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
            await c.delete(q.keys.ready, q.keys.env)  # SEEN stays: the crawl below is the measured part
            await _done_as_seen(c, q.keys.seen(run), q.keys.done(run))
            await c.aclose()

        asyncio.run(seed())
        # a short crawl of another run first: the workers' SCRIPT LOADs (~40 KB each, what a Redis keeps once
        # for every run after) reach the AOF before the measured window, not inside it (16 B a page of 5,000)
        asyncio.run(_crawl(srv.url, f"warm{size}", k, 4 * k))
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


def start_cluster() -> Any:
    """A fresh 3-primary cluster (tests/cluster.py) configured as the single-Redis sim's server: AOF
    everysec, no RDB, auto AOF rewrite off. ``stop()`` it."""
    from tests.cluster import Cluster, cluster_ports

    cl = Cluster(redis_binary(), cluster_ports(SHARDS), fsync="everysec").start()
    for n in cl.nodes:
        c = n.client()
        try:
            c.config_set("auto-aof-rewrite-percentage", 0)
        finally:
            c.close()
    return cl


def _primary_of(clients: list[redis.Redis], key: str) -> int:
    """Which of the primaries ``clients`` (plain clients, one a node) serves ``key``'s slot."""
    slot = int(clients[0].execute_command("CLUSTER", "KEYSLOT", key))
    ports = [int(c.connection_pool.connection_kwargs["port"]) for c in clients]
    for lo, hi, primary, *_ in clients[0].execute_command("CLUSTER", "SLOTS"):
        if int(lo) <= slot <= int(hi):
            return ports.index(int(primary[1]))
    raise LookupError(key)


def simulate_cluster(
    cluster: Any,
    ks: tuple[int, ...] = (1, 8, 64),
    pages: int = 20_000,
    modes: tuple[tuple[str, int, bool], ...] = MODES,
    single: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``simulate`` against ``cluster`` (tests.cluster.Cluster) with a ``ShardedQueue`` of ``SHARDS`` shards
    per worker. ``single``: the single-Redis rows of the same run, quoted beside each row for comparison."""
    nodes = [n.client(socket_timeout=30) for n in cluster.nodes]
    home = [_primary_of(nodes, Keys(SPIDER, i, SHARDS).prefix) for i in range(SHARDS)]
    out = []
    try:
        for (mode, fanout, claim), k in itertools.product(modes, ks):
            run = f"k{k}"
            for c in nodes:
                c.flushall()
                c.config_resetstat()
            before: list[dict[str, float]] = []

            def mark(before: list[dict[str, float]] = before) -> None:
                before[:] = [_redis_stats(c) for c in nodes]

            res = asyncio.run(_crawl(cluster.url, run, k, pages, fanout, claim, shards=SHARDS, ready=mark))
            after = [_redis_stats(c) for c in nodes]
            delta = [{x: a[x] - b[x] for x in a} for a, b in zip(after, before, strict=True)]
            done = [int(nodes[home[i]].hget(Keys(SPIDER, i, SHARDS).done(run), "count") or 0) for i in range(SHARDS)]
            out.append(_cluster_row(mode, k, res, delta, done, home, single))
    finally:
        for c in nodes:
            c.close()
    return out


def _cluster_row(mode: str, k: int, res: dict[str, Any], delta: list[dict[str, float]], done: list[int],
                 home: list[int], single: list[dict[str, Any]] | None) -> dict[str, Any]:
    n, total = res["pages"], max(1, sum(done))
    mean = total / len(done)
    shards = []
    for i, d in enumerate(done):
        node = delta[home[i]]
        on_primary = sum(done[j] for j in range(len(done)) if home[j] == home[i])  # 1 shard per primary, normally
        shards.append({
            "shard": i,
            "primary": home[i],
            "pages": d,
            "share": d / total,
            # the primary's whole CPU over the pages of its shard(s): what a page of this shard costs it
            "redis_cpu_us_per_page": node["cpu"] / max(1, on_primary) * 1e6,
            "redis_cpu_s": node["cpu"],
            "cmds_per_page": node["calls"] / max(1, on_primary),
            "evalsha_per_page": node["evalsha"] / max(1, on_primary),
            "aof_bytes_per_page": node["aof"] / max(1, on_primary),
            "lease_scripts_per_page": res["part_leases"][i] / max(1, d),
        })
    cpu = sum(x["cpu"] for x in delta)
    busiest = max(shards, key=lambda x: x["redis_cpu_s"])
    one_core = 1e6 / max(1e-9, busiest["redis_cpu_us_per_page"])
    shares = [x["share"] for x in shards]
    same = next((r for r in single or () if r["k"] == k and r["mode"] == mode), None)
    return {
        "k": k,
        "mode": mode,
        "pages": n,
        "pages_done": sum(done),
        "pages_per_s": n / res["wall_s"],
        "redis_cpu_us_per_page": cpu / total * 1e6,
        "cmds_per_page": sum(x["calls"] for x in delta) / total,
        "aof_bytes_per_page": sum(x["aof"] for x in delta) / total,
        "lease_calls_per_page": res["lease_calls"] / total,
        "lease_scripts_per_page": sum(res["part_leases"]) / total,
        "shards": shards,
        "split_max_dev_pct": 100 * max(abs(d - mean) for d in done) / mean,
        # projections: pages/s one Redis core sustains at the busiest shard's cost per page of its own, and
        # three primaries on three cores of their own, held back by the split (min share / max share)
        "one_core_pages_per_s": one_core,
        "three_cores_pages_per_s": SHARDS * one_core * min(shares) / max(max(shares), 1e-9),
        # the same bound read directly: the cluster stops where its busiest primary's core is full
        "busiest_bound_pages_per_s": total / max(1e-9, max(x["cpu"] for x in delta)),
        "single_redis_cpu_us_per_page": same["redis_cpu_us_per_page"] if same else None,
        "single_pages_per_s": same["pages_per_s"] if same else None,
        "single_one_core_pages_per_s": 1e6 / max(1e-9, same["redis_cpu_us_per_page"]) if same else None,
    }


def run_section(tmp: Path, pages: int, big: int, cluster: bool = True) -> dict[str, Any]:
    srv = RedisServer(tmp / "redis-sim", aof=True).start()
    try:
        out: dict[str, Any] = {
            "sim": simulate(srv, pages=pages),
            "aof": aof_per_page(srv, sizes=(10_000, big)),
        }
    finally:
        srv.stop()
    if not cluster:
        out["shards"] = "off (BENCH_SIM_CLUSTER=0)"
        return out
    cl = start_cluster()
    try:
        out["cluster"] = simulate_cluster(cl, pages=pages, single=out["sim"])
        out["shards"] = f"{SHARDS} shards on a {len(cl.nodes)}-primary cluster (table below)"
    finally:
        cl.stop()
    return out


def table(res: dict[str, Any]) -> Any:
    """The section as a rich Table (run.py prints it)."""
    from rich.table import Table

    t = Table(title="Fleet simulator: one Redis, K simulated workers (no Scrapy, no HTTP); AOF everysec")
    for col in ("K", "crawl", "pages", "pages/s", "Redis CPU µs/page", "Redis busy", "sim CPU µs/page",
                "sim busy", "cmds/page", "LEASE calls/page", "AOF B/page"):
        t.add_column(col, justify="right")
    for r in res["sim"]:
        t.add_row(
            str(r["k"]),
            r["mode"],
            f"{r['pages']:,}",
            f"{r['pages_per_s']:,.0f}",
            f"{r['redis_cpu_us_per_page']:.0f}",
            f"{r['redis_busy']:.0%}",
            f"{r['sim_cpu_us_per_page']:.0f}",
            f"{r['sim_busy']:.0%}",
            f"{r['cmds_per_page']:.1f}",
            f"{r['lease_calls_per_page']:.2f}",
            f"{r['aof_bytes_per_page']:,.0f}",
        )
    for a in res["aof"]:
        t.add_row(
            f"8, run of {a['seen_before']:,} SEEN+DONE",
            "chain",
            f"{a['pages']:,}",
            *[""] * 7,
            f"{a['aof_bytes_per_page']:,.0f}",
        )
    t.caption = (f"shards: {res['shards']}. busy: CPU / wall; the simulator is one Python process on one core, so "
                 "at ~100 % sim busy it, not Redis, sets pages/s; Redis's own ceiling is 1e6 / its µs per page")
    return t


def cluster_table(res: dict[str, Any]) -> Any:
    """The cluster mode as a rich Table (run.py prints it), or None when it did not run."""
    from rich.table import Table

    rows = res.get("cluster")
    if not rows:
        return None
    t = Table(title=f"Fleet simulator: {SHARDS}-shard ShardedQueue on a {SHARDS}-primary Redis Cluster (AOF everysec), "
                    "K simulated workers", title_justify="left")
    for col in ("K", "crawl", "pages", "pages/s", "Redis µs/page, all", "µs/page s0/s1/s2", "pages s0/s1/s2",
                "max dev", "cmds/page", "LEASE calls/page", "LEASE scripts/page", "AOF B/page",
                "1 core pages/s*", "3 cores pages/s*", "1 Redis: pages/s, µs/page, 1 core*"):
        t.add_column(col, justify="right", overflow="fold")
    for r in rows:
        sh = r["shards"]
        one = "" if r["single_pages_per_s"] is None else (
            f"{r['single_pages_per_s']:,.0f}, {r['single_redis_cpu_us_per_page']:.0f}, "
            f"{r['single_one_core_pages_per_s']:,.0f}")
        t.add_row(
            str(r["k"]),
            r["mode"],
            f"{r['pages']:,}",
            f"{r['pages_per_s']:,.0f}",
            f"{r['redis_cpu_us_per_page']:.0f}",
            " / ".join(f"{x['redis_cpu_us_per_page']:.0f}" for x in sh),
            " / ".join(f"{100 * x['share']:.1f}%" for x in sh),
            f"{r['split_max_dev_pct']:.1f}%",
            f"{r['cmds_per_page']:.1f}",
            f"{r['lease_calls_per_page']:.2f}",
            f"{r['lease_scripts_per_page']:.2f}",
            f"{r['aof_bytes_per_page']:,.0f}",
            f"{r['one_core_pages_per_s']:,.0f}",
            f"{r['three_cores_pages_per_s']:,.0f}",
            one,
        )
    t.caption = (
        "Per shard: its primary's Redis CPU (INFO cpu, user+sys, cluster bus included) / the shard's pages (its "
        "DONE count); split: each shard's share of the pages, max dev = largest |shard − mean| / mean. LEASE "
        "calls: the workers' calls of ShardedQueue.lease; LEASE scripts: its calls of the shards' lease (one "
        "script each), counted client-side. * PROJECTIONS, not measured: here the 3 primaries and the Python "
        "workers share 2 cores. 1 core = 1e6 / µs per page of the busiest shard (the primary that used most "
        "CPU); 3 cores = 3 × that × (min share / max share). Last column: the single-Redis simulator's row of the same "
        "run (its 1 core = 1e6 / its µs per page). Every worker packs commands with hiredis "
        "(redisio.client), as the single-Redis ones and the worker do: pages/s here are bound by the Python side."
    )
    return t

"""Dedup memory, dedup check latency and seeding throughput."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from scraper.queue import scripts as lua
from scraper.queue import seenset
from tests.bench.crawl import ROOT, base_env
from tests.bench.procs import RedisServer, aof_size

ADD_MANY = lua.with_helpers(
    "local n = 0\nfor i = 1, #ARGV do n = n + set_add(KEYS[1], ARGV[i], 172800) end\nreturn n\n")


def set_bytes(r: redis.Redis, key: str) -> int:
    """MEMORY USAGE (exact) of a SEEN/DONE set: its hash and every bucket string (scraper.queue.seenset)."""
    pipe = r.pipeline(transaction=False)
    for name in (key, *seenset.bucket_keys(key)):
        pipe.memory_usage(name, samples=0)
    return sum(int(x) for x in pipe.execute() if x is not None)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def dedup_memory(srv: RedisServer, n: int, batch: int = 5000) -> dict[str, Any]:
    """Bytes per SEEN URL: Fleet's bucketed hash vs scrapy-redis's set of 40-char sha1 hex."""
    r = srv.client()
    r.flushall()
    add = r.register_script(ADD_MANY)
    fps = [os.urandom(8).hex() for _ in range(n)]
    t = time.perf_counter()
    added = 0
    for i in range(0, n, batch):
        added += int(add(keys=["bench:fleet:seen"], args=fps[i:i + batch]))
    fleet_s = time.perf_counter() - t
    fleet_bytes = set_bytes(r, "bench:fleet:seen")
    t = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i in range(0, n, batch):
        pipe.sadd("bench:srd:seen", *[hashlib.sha1(f.encode()).hexdigest() for f in fps[i:i + batch]])
        if (i // batch) % 20 == 19:
            pipe.execute()
    pipe.execute()
    srd_s = time.perf_counter() - t
    srd_bytes = int(r.memory_usage("bench:srd:seen", samples=0) or 0)
    out = {
        "urls": n, "fleet_added": added,
        "fleet_bytes": fleet_bytes, "fleet_bytes_per_url": fleet_bytes / n, "fleet_insert_per_s": n / fleet_s,
        "scrapy_redis_bytes": srd_bytes, "scrapy_redis_bytes_per_url": srd_bytes / n,
        "scrapy_redis_insert_per_s": n / srd_s,
    }
    r.delete("bench:srd:seen")
    r.close()
    return out | {"_fps": fps}


def dedup_latency(srv: RedisServer, present: list[str], n_single: int = 20000, n_batches: int = 400,
                  per_batch: int = 100) -> dict[str, Any]:
    """HAS latency from redis-py: one EVALSHA per fp, and per-fp time of 100-fp EVALSHAs."""
    out: dict[str, Any] = {}
    key = "bench:fleet:seen"
    for transport, url in (("tcp", srv.url), ("unix", srv.unix_url)):
        r = redis.Redis.from_url(url)
        has = r.register_script(lua.load("has").source)
        pool = [present[i % len(present)] if i % 2 == 0 else os.urandom(8).hex()
                for i in range(max(n_single + 1000, n_batches * per_batch))]
        for fp in pool[:1000]:  # warm-up: connection, script cache
            has(keys=[key], args=[fp])
        lat: list[float] = []
        ping: list[float] = []
        pc = time.perf_counter_ns
        singles = pool[1000:n_single + 1000]
        step = max(1, len(singles) // 10)
        for blk in range(0, len(singles), step):  # interleave PING blocks: the transport floor, same moment
            for _ in range(step // 4):
                t0 = pc()
                r.ping()
                ping.append((pc() - t0) / 1000)
            for fp in singles[blk:blk + step]:
                t0 = pc()
                has(keys=[key], args=[fp])
                lat.append((pc() - t0) / 1000)
        blat = []
        for b in range(n_batches):
            fps = pool[b * per_batch:(b + 1) * per_batch]
            t0 = pc()
            res = has(keys=[key], args=[*fps])
            blat.append((pc() - t0) / 1000 / per_batch)
            assert len(res) == per_batch
        hits = sum(has(keys=[key], args=[*present[:100]]))
        out[transport] = {
            "single_p50_us": statistics.median(lat), "single_p99_us": _pct(lat, 99),
            "ping_p50_us": statistics.median(ping), "ping_p99_us": _pct(ping, 99),
            "batched_p50_us_per_fp": statistics.median(blat), "batched_p99_us_per_fp": _pct(blat, 99),
            "batch_size": per_batch, "checks": len(lat), "sanity_hits_of_100_present": hits,
        }
        r.close()
    return out


def seeding(srv: RedisServer, tmp: Path, n: int, base_url: str) -> dict[str, Any]:
    """`fleet seed demo_shop --urls FILE --run X` of n URLs, timed end to end as a subprocess."""
    r = srv.client()
    r.flushall()
    urls = tmp / "seed-urls.txt"
    with urls.open("w") as fh:
        for i in range(n):
            fh.write(f"{base_url}/item/{i}.html\n")
    one = tmp / "seed-one.txt"
    one.write_text(f"{base_url}/item/start.html\n")
    env = base_env(FLEET_REDIS_URL=srv.url, FLEET_STORE=f"file://{tmp / 'seed-data'}",
                   FLEET_HOME=str(tmp / "seed-home"), FLEET_LOG_LEVEL="WARNING")

    def fleet_seed(path: Path, run: str) -> tuple[float, str]:
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "scraper.cli", "seed", "demo_shop", "--urls", str(path),
                              "--run", run], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        dt = time.perf_counter() - t
        if res.returncode != 0:
            raise RuntimeError(f"fleet seed failed: {res.stderr[-2000:]}")
        return dt, res.stdout.strip()

    startup = min(fleet_seed(one, f"seed-startup-{i}")[0] for i in range(2))
    r.flushall()
    aof0 = aof_size(r)
    mem0 = int(r.info("memory")["used_memory"])
    total, stdout = fleet_seed(urls, "seed-bench")
    mem1 = int(r.info("memory")["used_memory"])
    aof1 = aof_size(r)
    out = {
        "urls": n, "wall_s": total, "startup_s": startup, "stdout": stdout,
        "urls_per_s": n / total, "urls_per_s_excl_startup": n / max(1e-9, total - startup),
        "redis_bytes_per_url": (mem1 - mem0) / n, "aof_bytes_per_url": (aof1 - aof0) / n,
        "aof": srv.aof,
    }
    r.flushall()
    r.close()
    urls.unlink()
    return out

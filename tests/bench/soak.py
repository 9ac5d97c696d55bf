"""Soak: one Fleet worker's RSS over many page fetches (several runs of the static site seeded up front)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.bench.crawl import PY, base_env, fleet_fetch_ts, hang_watch
from tests.bench.procs import Monitor, RedisServer, wait_rusage


def soak(srv: RedisServer, tmp: Path, start_url: str, pages_per_run: int, target_pages: int,
         concurrency: int, timeout: float, out_dir: Path) -> dict[str, Any]:
    runs = max(1, -(-target_pages // pages_per_run))
    work = tmp / "soak"
    work.mkdir(parents=True, exist_ok=True)
    env = base_env(FLEET_REDIS_URL=srv.url, FLEET_STORE=f"file://{work / 'data'}", FLEET_HOME=str(work / "home"),
                   FLEET_DEMO_URL=start_url, FLEET_LOG_LEVEL="INFO")
    r = srv.client()
    r.flushall()
    for k in range(runs):
        subprocess.run([PY, "-m", "scraper.cli", "seed", "demo_shop", "--run", f"soak-{k}"], env=env, cwd=work,
                       check=True, capture_output=True, timeout=120)
    log = work / "worker.log"
    started = time.time()
    with log.open("wb") as fh:
        p = subprocess.Popen([PY, "-m", "scraper.cli", "worker", "demo_shop", "--concurrency", str(concurrency),
                              "--until-idle", "2"], env=env, cwd=work, stdout=fh, stderr=fh)
    mon = Monitor({"w": p.pid}, interval=1.0)
    mon.start()
    hung: list[bool] = []
    watch = hang_watch(log, p.pid, out_dir / "hang-soak.txt", lambda: hung.append(True))
    code, cpu, peak = wait_rusage(p, timeout, watch)
    mon.stop()
    ts = sorted(fleet_fetch_ts(log))
    s = mon.series["w"]
    # The peak is the sampled maximum over the worker's life, not wait4's ru_maxrss: Linux folds the
    # RSS a child had between fork and exec (a copy of this bench process's, which is larger after
    # the 1M-URL seeding) into the child's ru_maxrss: it reported 143 MB for a worker that 20 ms
    # sampling never saw above 105 MB.
    out: dict[str, Any] = {"runs": runs, "target_pages": target_pages, "pages": len(ts), "exit_code": code,
                           "wall_s": time.time() - started,
                           "rss_peak_mb": (max(s.rss) if s.rss else peak) / 2**20,
                           "rss_maxrss_wait4_mb": peak / 2**20, "hung_at_exit": bool(hung)}
    if len(ts) < 10 or not s.t:
        return out
    t_first, t_last = ts[0], ts[-1]
    at = {f"{q}%": ts[min(len(ts) - 1, int(len(ts) * q / 100))] for q in (10, 25, 50, 75, 90)}
    rss_first = s.rss_at(t_first)
    rss_10 = s.rss_at(at["10%"])
    in_run = [m for t, m in zip(s.t, s.rss, strict=False) if t_first <= t <= t_last]
    rss_end = s.rss_at(t_last)
    out.update({
        "pages_per_s": (len(ts) - 1) / (t_last - t_first),
        "cpu_ms_per_page_total": 1000 * cpu / len(ts),
        "rss_first_fetch_mb": rss_first / 2**20,
        "rss_10pct_mb": rss_10 / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "rss_max_during_crawl_mb": max(in_run) / 2**20 if in_run else None,
        "growth_from_10pct": rss_end / rss_10 - 1,
        "growth_from_first_fetch": rss_end / rss_first - 1,
        # a leak keeps growing; warm-up (allocator arenas, caches) levels off: the second half tells them apart
        "growth_second_half": rss_end / s.rss_at(at["50%"]) - 1,
        "timeline_mb": {q: s.rss_at(t) / 2**20 for q, t in at.items()},
    })
    r.flushall()
    r.close()
    return out

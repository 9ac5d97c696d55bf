"""Widths (issue #17 item 6): one Fleet worker's throughput at concurrency 1, 2, 4 ... 64 against a site
that takes 5 ms per page.

Why a delaying site: against nginx (answers in ~0.1 ms) a worker is CPU-bound at any width, so the width
says nothing. With 5 ms per page, an ideal crawler does width / 0.005 s pages per second; the measured
figure shows up to which width Fleet follows that line and where the worker's CPU (one Python process,
on a 2-core host shared with the site and Redis) becomes the ceiling.

The site is a raw asyncio HTTP/1.1 server with keep-alive in its own process (``python -m
tests.bench.widths serve PORT N``): each request sleeps 5 ms without blocking the others, then answers
the demo shop's product page (pre-rendered), so the demo_shop spider's ``parse_product`` runs as in the
crawl benches (items, objects, acks: the full path).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.bench.crawl import PY, base_env, fleet_fetch_ts
from tests.bench.procs import Monitor, RedisServer
from tests.bench.site import free_port, wait_port

__all__ = ["DEFAULT_WIDTHS", "DELAY_S", "explain", "widths_bench"]

DELAY_S = 0.005
DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32, 64)


async def _serve(port: int, n: int) -> None:
    from scraper.devtools.demo_site import DemoSite

    site = DemoSite(n_products=n)
    pages: dict[bytes, bytes] = {}
    for pid in range(1, n + 1):
        path = f"/product/{pid}.html"
        _, _, body = site.render(path)
        data = body.encode()
        pages[path.encode()] = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                                b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                await asyncio.sleep(DELAY_S)
                writer.write(pages.get(path, missing))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, IndexError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


def _cause(r: dict[str, Any]) -> str:
    if r["cpu"] >= 0.9:
        return (f"the worker is CPU-bound there ({r['cpu']:.0%} of a core, {r['cpu_ms_per_page']:.2f} ms of CPU a "
                f"page: one core does ~{1000 / r['cpu_ms_per_page']:.0f} pages/s)")
    if r["host_busy"] >= 0.95:
        return (f"the host's 2 cores were busy ({r['host_busy']:.0%}) while the worker got {r['cpu']:.0%} of one: "
                "other processes took the CPU, so that figure is contention, not Fleet")
    return f"neither the worker's CPU ({r['cpu']:.0%}) nor the host ({r['host_busy']:.0%}) was saturated"


def explain(rows: list[dict[str, Any]]) -> str:
    """Where the widths saturate and why, in words: the first width whose gain over the previous is
    under 15 %, and any width after the peak that drops below 90 % of it, each with its cause (the worker
    CPU-bound, or the host's cores taken by other processes)."""
    if not rows:
        return "no widths measured"
    best = max(rows, key=lambda r: r["pages_per_s"])
    text = (f"peak {best['pages_per_s']:.0f} pages/s at width {best['width']} "
            f"({best['pages_per_s'] / best['ideal']:.0%} of the ideal {best['ideal']:.0f})")
    sat = next((b for a, b in itertools.pairwise(rows) if b["pages_per_s"] < 1.15 * a["pages_per_s"]), None)
    if sat is None:
        text += "; still scaling at the widest width"
    else:
        text += f"; stops scaling at width {sat['width']} (< 15 % over the width before): {_cause(sat)}"
    for r in rows:
        if r["width"] > best["width"] and r["pages_per_s"] < 0.9 * best["pages_per_s"]:
            text += f"; drop at width {r['width']} ({r['pages_per_s']:.0f} pages/s): {_cause(r)}"
    return text


def widths_bench(redis: RedisServer, tmp: Path, widths: list[int], pages: int) -> dict[str, Any]:
    work = tmp / "widths"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = subprocess.Popen([PY, "-m", "tests.bench.widths", "serve", str(port), str(pages)],
                            env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows: list[dict[str, Any]] = []
    try:
        wait_port(port, 30)
        urls = work / "urls.txt"
        urls.write_text("".join(f"http://127.0.0.1:{port}/product/{i}.html\n" for i in range(1, pages + 1)))
        for width in widths:
            env = base_env(FLEET_REDIS_URL=redis.url, FLEET_STORE=f"file://{work / 'data'}",
                           FLEET_HOME=str(work / "home"), FLEET_LOG_LEVEL="INFO", FLEET_LOG_FORMAT="json")
            r = redis.client()
            r.flushall()
            r.close()
            run = f"width-{width}"
            subprocess.run([PY, "-m", "scraper.cli", "seed", "demo_shop", "--run", run, "--urls", str(urls),
                            "--callback", "parse_product"], env=env, cwd=work, check=True, capture_output=True,
                           timeout=120)
            log = work / f"worker-{width}.log"
            with log.open("wb") as fh:
                p = subprocess.Popen([PY, "-m", "scraper.cli", "worker", "demo_shop", "--concurrency", str(width),
                                      "--until-idle", "0.5"], env=env, cwd=work, stdout=fh, stderr=fh)
            mon = Monitor({"w": p.pid, "site": site.pid}, interval=0.1)
            mon.start()
            code = p.wait(300)
            mon.stop()
            ts = sorted(fleet_fetch_ts(log))
            t0, t1 = (ts[0], ts[-1]) if len(ts) > 1 else (0.0, 0.0)
            span = t1 - t0
            rate = (len(ts) - 1) / span if span > 0 else 0.0
            # CPU (worker and its writer process; the site) between the first and the last fetch only:
            # the worker's start-up and idle exit are not per-page work
            cpu = mon.series["w"].cpu_at(t1) - mon.series["w"].cpu_at(t0)
            site_cpu = mon.series["site"].cpu_at(t1) - mon.series["site"].cpu_at(t0)
            rows.append({"width": width, "pages": len(ts), "seconds": span, "pages_per_s": rate,
                         "ideal": width / DELAY_S, "cpu": cpu / span if span > 0 else 0.0,
                         "site_cpu": site_cpu / span if span > 0 else 0.0,
                         "host_busy": mon.host_busy(t0, t1),
                         "cpu_ms_per_page": 1000 * cpu / max(1, len(ts) - 1), "exit_code": code})
    finally:
        site.terminate()
        site.wait(10)
    return {"delay_ms": DELAY_S * 1000, "pages": pages, "rows": rows, "explanation": explain(rows)}


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    asyncio.run(_serve(int(sys.argv[2]), int(sys.argv[3])))

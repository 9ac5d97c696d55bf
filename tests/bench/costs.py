"""What a LEASE and a COMMIT cost Redis per call and per entry, in instructions (issue #18).

Why: Redis's CPU per page is a call's fixed cost (the script's set-up, its first reads) spread over the batch,
plus each entry's own cost. Which one to cut decides where work pays: a one-entry chain pays the fixed part
per page, a full batch of 32 mostly the per-entry part. Instruction counts under callgrind do not move with
the machine's load, so they A/B two trees exactly (run this module from each, ``PYTHONPATH=<tree>``).

``python -m tests.bench.costs [--calls N] [--sizes 1,8,32]`` starts a redis-server (the bench's binary,
``procs.redis_binary``; AOF everysec as the bench) under ``valgrind --tool=callgrind --instr-atstart=no``,
seeds plain GETs of one run and domain, then for each batch size B: N LEASE calls of B entries with
instrumentation on, then N COMMIT calls of the same leases (each commit: DONE, one new child, the ack), and
prints instructions per call and per entry, and the least-squares split of each script into a fixed part per
call and a part per entry over the sizes. Needs valgrind (``apt-get install valgrind``); ~1 minute.

``--floor`` measures the same work done by two minimal scripts instead (``tests/bench/lua/floor_*.lua``): only
the writes a lease and a commit cannot do without (READY, the envelopes, IN-FLIGHT, the lease tokens, SEEN,
DONE, seq), batched as Fleet batches them, none of the checks (DONE at lease, holds, breakers, cancelled runs,
deliveries, claims, hops, the AOF-only READY bookkeeping, the sets' counts, wake-ups). Why: issue #18's Redis CPU
bar is per page; this says how far below the bar those writes alone already are on this Redis, i.e. how much of
Fleet's cost is the scripts' own work and how much any Lua implementation of the same transitions pays.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from scraper.queue.client import Commit, FleetQueue
from scraper.queue.envelope import Envelope
from scraper.queue.keys import new_id
from scraper.queue.records import Lease, LeaseBatch
from scraper.queue.seenset import packed
from tests.bench.procs import free_port, redis_binary, wait_port
from tests.bench.replay import callgrind_total

__all__ = ["main", "measure"]

SPIDER, RUN, DOMAIN = "costs", "r", "costs.example"


class _Callgrind:
    """A redis-server under callgrind with instrumentation off until ``on()``; ``total()`` dumps and reads."""

    def __init__(self, work: Path) -> None:
        self.work, self.port = work, free_port()
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work / 'cg.out'}",
             redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(work), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=120)

    def _ctl(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)

    def on(self) -> None:
        self._ctl("-z")
        self._ctl("-i", "on")

    def total(self) -> int:
        """Instructions since ``on()``; instrumentation off again."""
        self._ctl("-i", "off")
        before = set(self.work.glob("cg.out*"))
        self._ctl("-d")
        for _ in range(100):  # the dump is written by the server: wait for the new file
            new = set(self.work.glob("cg.out*")) - before
            if new:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        return callgrind_total(str(max(new, key=lambda f: f.stat().st_mtime)))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


class FloorQueue:
    """``seed``, ``lease`` and ``commit`` as ``_size`` calls them, done by the floor scripts (``--floor``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.keys = FleetQueue(client, SPIDER).keys  # the same key names (so the same hash tag and lengths)
        k = self.keys
        run = f"{k.prefix}seen:{RUN}"
        self._lease_keys = [k.ready, k.env, k.inflight, k.lease]
        self._commit_keys = [k.ready, k.env, k.inflight, k.lease, k.seq, run, f"{k.prefix}done:{RUN}"]
        src = Path(__file__).with_name("lua")
        self._lease = client.register_script((src / "floor_lease.lua").read_text())
        self._commit = client.register_script((src / "floor_commit.lua").read_text())

    async def seed(self, run: str, envs: list[Envelope]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for e in envs:
            eid = new_id(e.fp)
            pipe.hset(self.keys.env, eid, e.dumps())
            pipe.zadd(self.keys.ready, {eid: 0})
        await pipe.execute()

    async def lease(self, n: int, *, worker: str, lease_seconds: float) -> LeaseBatch:
        flat = await self._lease(keys=self._lease_keys, args=[n, time.time() + lease_seconds, worker])
        leased = [Lease(flat[q].decode(), flat[q + 1], 1, worker) for q in range(0, len(flat), 2)]
        return LeaseBatch(leased=leased)

    async def commit(self, commits: list[Commit]) -> None:
        args: list[Any] = []
        for c in commits:
            kid = c.discovered[0]
            args += [c.lease_id, c.token, packed(c.fp), c.ids[0], kid.dumps(), packed(kid.fp)]
        await self._commit(keys=self._commit_keys, args=args)


def _env(path: str) -> Envelope:
    return Envelope.for_url(f"https://{DOMAIN}/{path}", spider_name=SPIDER, run=RUN)


async def _size(cg: _Callgrind, q: FleetQueue, b: int, calls: int, serial: list[int]) -> tuple[int, int]:
    """(LEASE instructions, COMMIT instructions) over ``calls`` calls of ``b`` entries each."""
    serial[0] += 1
    phase = serial[0]
    await q.seed(RUN, [_env(f"s/{phase}/{i}") for i in range(b * calls)])
    cg.on()
    batches = [await q.lease(b, worker="w", lease_seconds=600) for _ in range(calls)]
    lease_ir = cg.total()
    commits = []
    for batch in batches:
        if len(batch.leased) != b:
            raise RuntimeError(f"LEASE gave {len(batch.leased)} entries, not {b}")
        cs = []
        for lease in batch.leased:
            serial[0] += 1
            kid = _env(f"k/{serial[0]}")
            cs.append(Commit(lease.id, lease.token, RUN, Envelope.loads(lease.raw).fp, [kid], domain=DOMAIN,
                             ids=[new_id(kid.fp)]))
        commits.append(cs)
    cg.on()
    for cs in commits:
        await q.commit(cs)
    commit_ir = cg.total()
    await q.client.delete(q.keys.ready, q.keys.env)  # the children: the next size leases its own seeds
    return lease_ir, commit_ir


def _split(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of instructions per call = fixed + per_entry * B: (fixed, per_entry)."""
    n = len(points)
    mx, my = sum(b for b, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((b - mx) ** 2 for b, _ in points)
    slope = sum((b - mx) * (y - my) for b, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


async def _measure(cg: _Callgrind, sizes: list[int], calls: int, floor: bool = False) -> dict[str, Any]:
    client = aioredis.Redis(port=cg.port, socket_timeout=600)
    q: Any = FleetQueue(client, SPIDER)
    if floor:
        # Fleet's scripts keep LEASE and IN-FLIGHT (and READY under a batch) out of the listpack encoding
        # (lua/_helpers.lua: big_encoding, ready_big), whose writes scan it; the floor's structures get the
        # same from the server's settings
        for name in ("hash-max-ziplist-entries", "zset-max-ziplist-entries"):
            await client.config_set(name, 0)
        q = FloorQueue(client)
    serial = [0]
    await _size(cg, q, 1, 2, serial)  # warm: scripts loaded, keys and encodings as in a crawl
    rows = []
    for b in sizes:
        lease_ir, commit_ir = await _size(cg, q, b, calls, serial)
        rows.append({"batch": b, "lease_per_call": lease_ir / calls, "commit_per_call": commit_ir / calls})
    await client.aclose()
    out: dict[str, Any] = {"calls": calls, "rows": rows}
    if len(sizes) > 1:
        for name in ("lease", "commit"):
            fixed, each = _split([(r["batch"], r[f"{name}_per_call"]) for r in rows])
            out[name] = {"fixed_per_call": fixed, "per_entry": each}
    return out


def measure(sizes: list[int], calls: int, floor: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fleet-costs-"))
    cg = _Callgrind(work)
    try:
        return asyncio.run(_measure(cg, sizes, calls, floor))
    finally:
        cg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30, help="calls per batch size (default 30)")
    ap.add_argument("--sizes", default="1,8,32", help="batch sizes, comma-separated (default 1,8,32)")
    ap.add_argument("--floor", action="store_true",
                    help="the floor: minimal scripts doing only the writes (tests/bench/lua/floor_*.lua)")
    a = ap.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    res = measure(sizes, a.calls, a.floor)
    for r in res["rows"]:
        b = r["batch"]
        print(f"B={b:3d}  LEASE {r['lease_per_call']:>11,.0f} /call {r['lease_per_call'] / b:>9,.0f} /entry   "
              f"COMMIT {r['commit_per_call']:>11,.0f} /call {r['commit_per_call'] / b:>9,.0f} /entry")
    for name in ("lease", "commit"):
        if name in res:
            print(f"{name.upper():6s} fixed {res[name]['fixed_per_call']:,.0f} per call + "
                  f"{res[name]['per_entry']:,.0f} per entry (least squares over the sizes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

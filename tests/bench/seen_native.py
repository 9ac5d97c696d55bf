"""SEEN/DONE as Redis's own integer sets against Fleet's bucket strings: memory and Redis CPU per add (issue #18).

Why: a COMMIT spends about 40 % of its per-entry instructions on its two SEEN/DONE adds (the bucket strings of
``scraper/queue/lua/_helpers.lua``: a GET per bucket, an aligned search in Lua, an APPEND). Redis keeps a set of
at most ``set-max-intset-entries`` (512 by default) integers as a sorted array of 8-byte integers (an intset),
searched and grown in C by SADD / SISMEMBER. A fingerprint's first 14 bits naming one of 16,384 keys and the
other 50 bits as the member stay exact, and up to 512 x 16,384 = 8.4M URLs a run every key stays an intset. This
measures both on one private redis-server without AOF: 1M random fingerprints added 8 per EVALSHA (a COMMIT's
batch), bytes per URL (``used_memory`` delta) and Redis CPU per add (``used_cpu_*`` delta). A measurement for
the decision, not a queue: Fleet does not use the intset form.

``python -m tests.bench.seen_native [--urls N]`` (~1 minute at 1M).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile

import redis

from scraper.queue.scripts import with_helpers
from scraper.queue.seenset import packed
from tests.bench.procs import cpu_seconds, free_port, redis_binary, wait_port

__all__ = ["measure"]

_SADD = """
for i = 1, #ARGV, 2 do redis.call('SADD', KEYS[1] .. ARGV[i], ARGV[i + 1]) end
return 0"""

# the bucket strings as COMMIT adds to them: one sc_load for the batch, then sc_add each, sc_flush
_BUCKETS = """
local l = {}
for i = 1, #ARGV do l[i] = ARGV[i] end
sc_load(KEYS[1], l)
for i = 1, #ARGV do local b, s = fpsplit(ARGV[i]); sc_add(KEYS[1], 86400, b, s) end
sc_flush()
return 0"""


def _run(r: redis.Redis, script: str, key: str, batches: list[list[str]]) -> tuple[float, float]:
    """(bytes, CPU seconds) of adding every batch through ``script``."""
    fn = r.register_script(script)
    m0, c0 = int(r.info("memory")["used_memory"]), cpu_seconds(r.info("cpu"))
    pipe = r.pipeline(transaction=False)
    for j, args in enumerate(batches, 1):
        fn(keys=[key], args=args, client=pipe)
        if j % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return int(r.info("memory")["used_memory"]) - m0, cpu_seconds(r.info("cpu")) - c0


def measure(urls: int = 1_000_000, batch: int = 8) -> dict[str, float | str]:
    rng = random.Random(1)
    fps = [rng.getrandbits(64) for _ in range(urls)]
    port, work = free_port(), tempfile.mkdtemp(prefix="fleet-seen-")
    proc = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        r = redis.Redis(port=port)
        native = [[x for fp in fps[j:j + batch] for x in (format(fp >> 50, "04x"), str(fp & (2**50 - 1)))]
                  for j in range(0, urls, batch)]
        nb, nc = _run(r, _SADD, "fleet:{b}:seen:r:", native)
        encoding = r.object("encoding", "fleet:{b}:seen:r:" + format(fps[0] >> 50, "04x"))
        r.flushall()
        strings = [[packed(format(fp, "016x")) for fp in fps[j:j + batch]] for j in range(0, urls, batch)]
        bb, bc = _run(r, with_helpers(_BUCKETS), "fleet:{b}:seen:r", strings)
        r.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return {"urls": urls, "intset_bytes_per_url": nb / urls, "intset_cpu_us_per_add": nc / urls * 1e6,
            "intset_encoding": str(encoding), "buckets_bytes_per_url": bb / urls,
            "buckets_cpu_us_per_add": bc / urls * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", type=int, default=1_000_000)
    res = measure(ap.parse_args().urls)
    print(f"{res['urls']:,} URLs, 8 adds per EVALSHA")
    print(f"  intset keys (SADD):         {res['intset_bytes_per_url']:6.2f} B/URL  "
          f"{res['intset_cpu_us_per_add']:5.2f} us Redis CPU/add  (encoding {res['intset_encoding']})")
    print(f"  bucket strings (Fleet now): {res['buckets_bytes_per_url']:6.2f} B/URL  "
          f"{res['buckets_cpu_us_per_add']:5.2f} us Redis CPU/add")
    return 0


if __name__ == "__main__":
    sys.exit(main())

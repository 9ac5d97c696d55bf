"""Process-level tuning a worker applies once its crawler is set up.

Why: under perf the cyclic GC took 10-15 % of a worker's CPU, and every older-generation pass walks
all of Scrapy's, Twisted's and our own start-up objects, which never become garbage. They are frozen
out of the collector once the spider is open. The thresholds stay at CPython's defaults: raising the
gen-0 threshold to 20,000 was measured (``make bench`` c, soak) to gain no pages/s and to add ~5 points
of RSS growth over 21,000 pages. The bench applies the same tuning to its tuned plain-Scrapy contender
(a') so Fleet's own overhead stays visible.

``tune_malloc`` pins glibc's mmap threshold: see its docstring.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting values, kept fixed
TRIM_THRESHOLD = 128 * 1024


def tune_gc() -> None:
    gc.collect()
    gc.freeze()


def tune_malloc() -> bool:
    """Keep allocations of 128 KiB and more in their own mappings, returned to the system when freed.

    Why: glibc raises its mmap threshold to the size of any large block freed (up to 32 MiB), after which
    such blocks come from the heap and stay in the process when freed (and the free space at the heap's
    top is returned only past a trim threshold raised along with it). A worker that buffered 32 bodies of
    up to DOWNLOAD_MAXSIZE at once (hostile sites: endless bodies, bombs) then kept that memory: peak RSS
    1.96-2.05 GB at concurrency 32, against 1.15-1.22 GB with both thresholds fixed (tests/integration/
    test_hostile_content.py, bombs32). Setting it explicitly switches the adjustment off. Typical pages are under it
    and unaffected. Returns whether it applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False

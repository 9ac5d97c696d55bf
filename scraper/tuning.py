"""Process-level tuning a worker applies once its crawler is set up.

Why: the cyclic GC's default gen-0 threshold (700 allocations) runs a collection every page or two,
and every older-generation pass walks all of Scrapy's, Twisted's and our own start-up objects: 10-15 %
of a worker's CPU under perf (``make bench``, contender c). Start-up objects are frozen out of the
collector and the young generation is collected every ``GC_GEN0`` allocations instead: cycles are
still collected, in bigger batches. The bench applies the same tuning to its tuned plain-Scrapy
contender (a') so Fleet's own overhead stays visible.
"""

from __future__ import annotations

import gc

GC_GEN0 = 20_000


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)

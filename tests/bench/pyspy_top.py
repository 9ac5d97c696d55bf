"""Summarise a ``py-spy record --format raw`` file: top frames by self and by inclusive samples.

``python -m tests.bench.pyspy_top bench-out/pyspy-c.txt [N]``
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int = 15) -> dict[str, list[tuple[str, int, float]]]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    thread_total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread_total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    total = max(1, thread_total)
    return {
        "self": [(f, c, 100 * c / total) for f, c in own.most_common(top)],
        "inclusive": [(f, c, 100 * c / total) for f, c in incl.most_common(top * 4)
                      if not f.startswith(("_run_module_as_main", "_run_code", "<module>"))][:top * 2],
        "samples": [("total", thread_total, 100.0)],
    }


def main() -> None:
    path = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    res = summarise(path, top)
    for kind in ("samples", "self", "inclusive"):
        print(f"== {kind}")
        for f, c, pct in res[kind]:
            print(f"{pct:6.1f}% {c:7d}  {f}")


if __name__ == "__main__":
    main()

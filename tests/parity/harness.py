"""Run a corpus spider under plain Scrapy and under ``fleet run --workers 2``, and compare the items.

Why subprocesses: each side is run the way its users run it (a CrawlerProcess; the ``fleet`` CLI with
two worker processes), so nothing of one leaks into the other. Items are compared as a multiset of
canonical JSON lines (order-free: Fleet's workers interleave), Fleet's ``_meta`` stamp removed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fleetproc import ROOT, fleet, fleet_env

__all__ = ["FleetResult", "ScrapyRun", "canon", "compare", "diff", "run_fleet", "run_scrapy"]

RUN = "parity"
TIMEOUT = 90.0


def canon(item: dict[str, Any]) -> str:
    """One item as canonical JSON, Fleet's provenance stamp removed."""
    return json.dumps({k: v for k, v in item.items() if k != "_meta"}, sort_keys=True)


def _env(base: str, extra: Mapping[str, str]) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PARITY_BASE"] = base
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


class ScrapyRun:
    """Plain Scrapy running ``spider`` in a subprocess; ``items()`` waits for it (started first, so that
    it overlaps the Fleet run of the same spider). ``site_env``: more of the site's addresses
    (``ParitySite.env()``) for both sides."""

    def __init__(self, spider: str, base: str, tmp: Path, site_env: Mapping[str, str] | None = None) -> None:
        self.spider, self.out = spider, tmp / f"scrapy-{spider}.jsonl"
        self.err = tmp / f"scrapy-{spider}.log"
        with open(self.err, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.parity.run_scrapy", spider, str(self.out)],
                                         env=_env(base, site_env or {}), cwd=ROOT, stdout=fh, stderr=fh)

    def items(self) -> Counter[str]:
        """The items plain Scrapy yielded (a multiset of canonical JSON)."""
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"plain scrapy {self.spider} did not finish in {TIMEOUT}s") from None
        assert code == 0, f"plain scrapy {self.spider} failed:\n{self.err.read_text()[-3000:]}"
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        return Counter(canon(json.loads(x)) for x in lines if x.strip())


def run_scrapy(spider: str, base: str, tmp: Path) -> Counter[str]:
    """The items plain Scrapy yields for ``spider``."""
    return ScrapyRun(spider, base, tmp).items()


def compare(spider: str, base: str, tmp: Path, redis_url: str, site_env: Mapping[str, str] | None = None,
            **extra: str) -> tuple[Counter[str], FleetResult]:
    """Plain Scrapy's items and Fleet's run of ``spider``, the two run side by side; ``extra`` is more
    environment for Fleet only (FLEET_* settings)."""
    ref = ScrapyRun(spider, base, tmp, site_env)
    got = run_fleet(spider, base, tmp, redis_url, site_env=site_env, **extra)
    return ref.items(), got


@dataclass
class FleetResult:
    items: Counter[str]
    code: int
    summary: dict[str, Any]
    stderr: str
    env: dict[str, str]  # the run's environment: for more ``fleet`` commands on its queue and store


def run_fleet(spider: str, base: str, tmp: Path, redis_url: str, workers: int = 2,
              site_env: Mapping[str, str] | None = None, **extra: str) -> FleetResult:
    """``fleet run SPIDER --workers N`` over the corpus; its items, exit code and summary."""
    home = tmp / f"fleet-{spider}"
    env = fleet_env(redis_url, home, **{"FLEET_SPIDER_MODULES": "tests.parity.corpus", "FLEET_LOG_LEVEL": "WARNING",
                                        "FLEET_LOG_FORMAT": "json", **extra})
    env.update(_env(base, site_env or {}))
    env["PYTHONPATH"] = f"{ROOT}"
    res = fleet("run", spider, "--workers", str(workers), "--run", RUN, "--idle", "1", env=env, timeout=TIMEOUT)
    try:
        summary = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"fleet run {spider} printed no summary ({res.returncode}):\n{res.stderr[-3000:]}") from None
    items: Counter[str] = Counter()
    root = home / "data" / "items" / f"spider={spider}" / f"run={RUN}"
    for p in sorted(root.rglob("*.jsonl")) if root.exists() else []:
        items.update(canon(json.loads(x)) for x in p.read_text().splitlines() if x.strip())
    return FleetResult(items, res.returncode, summary, res.stderr, env)


def diff(scrapy_items: Counter[str], fleet_items: Counter[str]) -> str:
    """A readable account of what differs ('' when the multisets are equal)."""
    only_s, only_f = scrapy_items - fleet_items, fleet_items - scrapy_items
    lines = [f"only under plain Scrapy ({sum(only_s.values())}):", *sorted(only_s)[:20],
             f"only under Fleet ({sum(only_f.values())}):", *sorted(only_f)[:20]]
    return "\n".join(lines) if only_s or only_f else ""

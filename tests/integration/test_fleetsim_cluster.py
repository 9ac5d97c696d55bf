"""The bench's fleet simulator in its cluster mode (tests/bench/fleetsim.py, issue #18 item 6) runs: a tiny
crawl of each shape on a fresh 3-primary cluster, every page DONE in some shard, every shard given work,
and the table renders. The numbers themselves are the bench's (``BENCH_SIM=1 make bench``), not checked here."""

from __future__ import annotations

import pytest

pytest.importorskip("psutil")  # the bench extra (tests/bench/procs.py)

from rich.console import Console

from tests.bench import fleetsim

pytestmark = [pytest.mark.integration]


def test_cluster_sim_runs_and_splits_over_the_shards() -> None:
    cl = fleetsim.start_cluster()
    try:
        rows = fleetsim.simulate_cluster(cl, ks=(1, 8), pages=200, single=[])
    finally:
        cl.stop()
    assert [(r["mode"], r["k"]) for r in rows] == [(m, k) for m, _, _ in fleetsim.MODES for k in (1, 8)]
    for r in rows:
        assert r["pages"] >= 200
        assert r["pages_done"] == r["pages"]  # every commit counted is a DONE in its shard
        assert len(r["shards"]) == fleetsim.SHARDS
        assert sorted(x["primary"] for x in r["shards"]) == [0, 1, 2]  # a primary of its own per shard
        assert all(x["pages"] > 0 and x["redis_cpu_us_per_page"] > 0 for x in r["shards"])
        assert abs(sum(x["share"] for x in r["shards"]) - 1) < 1e-9
        assert r["lease_scripts_per_page"] >= r["lease_calls_per_page"] > 0
        assert r["three_cores_pages_per_s"] <= fleetsim.SHARDS * r["one_core_pages_per_s"]
    out = Console(width=200, record=True)
    out.print(fleetsim.cluster_table({"cluster": rows}))
    assert "PROJECTIONS" in out.export_text()

"""`fleet run`'s contract with cron: the exit code tells the truth, the summary carries the totals,
`--deadline` cuts a run without losing anything and `--resume RUN` finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scraper.cli.runreport import exit_code
from scraper.devtools.demo_site import DemoSite
from scraper.queue.envelope import Envelope
from tests import loopback
from tests.fleetproc import counts, fleet, fleet_env, fleet_json, objects, queue_session, spider_module_env
from tests.integration.test_drift import BROKEN, FIXED, _spider_env

pytestmark = pytest.mark.integration


def _run(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, dict]:
    res = fleet("run", *args, env=env, timeout=timeout)
    assert res.stdout.strip(), f"no summary (exit {res.returncode}):\n{res.stderr[-3000:]}"
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


def test_drifted_run_is_incomplete_until_reset_and_resume(redis_url: str, tmp_path: Path) -> None:
    with DemoSite(n_products=60, per_page=20, latency=0.005).start() as site:
        site.template = "v2"  # the redesign shipped before tonight's run
        env = _spider_env(tmp_path, redis_url, BROKEN, FLEET_CONCURRENCY="4")
        urls = tmp_path / "urls.txt"
        urls.write_text(site.start_url + "\n")
        code, summary = _run("driftshop", "--urls", str(urls), "--run", "night1", env=env)
        assert code == 5, summary
        assert summary["parked"] > 0 and summary["breakers_open"] == ["127.0.0.1"], summary
        assert summary["seeded"] == 1 and summary["discovered"] == summary["seen"] - 1
        assert summary["outcomes"].get("C", 0) > 0 and summary["dlq"] == 0
        assert summary["done"] < summary["seen"]
        manifest = _manifest(tmp_path, "driftshop", "night1")
        assert summary["manifest"] == "runs/spider=driftshop/run=night1/manifest.json"
        assert manifest["complete"] is False and manifest["final"] is True and manifest["exit_code"] == 5
        assert manifest["counts"]["parked"] == summary["parked"] > 0  # this run's parked requests
        assert any("parked" in r for r in manifest["incomplete_reasons"])
        assert manifest["counts"]["breakers_open"] == ["127.0.0.1"] and manifest["counts"]["outcomes"]["C"] > 0
        assert manifest["reconciliation"]["ok"], manifest["reconciliation"]  # parked requests are accounted for

        site.template = "v1"
        fixed = _spider_env(tmp_path, redis_url, FIXED, FLEET_CONCURRENCY="4")
        reset = fleet_json("breakers", "reset", "driftshop", "127.0.0.1", env=fixed)
        assert reset["released"] == summary["parked"] and "--resume" in reset["next"]
        code, again = _run("driftshop", "--resume", "night1", env=fixed)
        assert code == 0, again
        assert again["resumed"] and again["seeded"] == 0 and again["parked"] == 0 and not again["breakers_open"]
        assert again["discovered"] == 62  # seen - the run's seeded total, which the manifest carries (was null)
        assert again["seen"] == again["done"] == 63  # 3 list pages + 60 products
        assert len(objects(tmp_path / "data", "items", "driftshop", "night1")) == 60
        manifest = _manifest(tmp_path, "driftshop", "night1")
        assert manifest["complete"] is True and manifest["incomplete_reasons"] == [] and manifest["exit_code"] == 0
        rec = manifest["reconciliation"]
        assert rec["ok"] and rec["seen"] == rec["done"] == 63 and rec["unaccounted"] == 0 and rec["problem"] is None
        c = manifest["counts"]
        assert c["seeded"] == 1 and c["discovered"] == 62 and c["parked"] == 0 and c["breakers_open"] == []
        assert c["outcomes"]["C"] == summary["outcomes"]["C"]  # the first invocation's outcomes carried over
        # every page ended ok exactly once, in one of the two invocations (a clean run's outcomes are not {})
        assert summary["outcomes"]["ok"] + again["outcomes"]["ok"] == c["outcomes"]["ok"] == 63, (summary, again)
        assert manifest["items"] == 60 and manifest["objects"] == 60
        assert manifest["field_coverage"] == {"name": 1.0, "price": 1.0, "sku": 1.0}
        assert manifest["schema"] == {"name": "string", "price": "string", "sku": "string"}
        assert manifest["spider"] == "driftshop" and manifest["item_key"] is None
        assert manifest["spider_version"].split("+")[-1] != "nosource"  # Fleet version + the source's hash
        assert manifest["started_at"] <= manifest["finished_at"]
        listed = fleet_json("runs", "driftshop", "--json", env=fixed)
        assert [m["run"] for m in listed] == ["night1"] and listed[0]["complete"] is True

        # cron runs the same command again: nothing new to seed, and the manifest still counts the first seed
        code, third = _run("driftshop", "--urls", str(urls), "--run", "night1", env=fixed)
        assert code == 0 and third["seeded"] == 0 and third["skipped"] == 1, third
        assert third["discovered"] == 62, third
        c = _manifest(tmp_path, "driftshop", "night1")["counts"]
        assert c["seeded"] == 1 and c["discovered"] == 62, c


def _manifest(tmp: Path, spider: str, run: str) -> dict:
    return json.loads((tmp / "data" / "runs" / f"spider={spider}" / f"run={run}" / "manifest.json").read_text())


def test_deadline_cuts_the_run_and_resume_finishes_it(redis_url: str, tmp_path: Path) -> None:
    with DemoSite(n_products=40, per_page=10, latency=1.0).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_CONCURRENCY="2",
                        FLEET_SHUTDOWN_GRACE="1")
        code, summary = _run("demo_shop", "--run", "cut", "--deadline", "8", "--export", env=env)
        assert code == 5 and summary["deadline_passed"], summary
        assert summary["done"] < summary["seen"], summary  # cut before the end (22 s of pages at concurrency 2)
        assert _manifest(tmp_path, "demo_shop", "cut")["export"]["rows"] < 40  # what the cut run had
        c = counts(redis_url, "demo_shop")
        assert c["inflight"] == 0 and c["ready"] > 0, c  # leases released, nothing held, nothing lost
        site.latency = 0.0
        code, again = _run("demo_shop", "--resume", "cut", env=env)
        assert code == 0, again
        assert again["seen"] == again["done"] == 44 and not again["deadline_passed"]
        assert again["seeded"] == 0 and again["discovered"] == 43  # the first invocation seeded 1
        # exported when cut, so exported again: the manifest's export matches the finished run (a --resume without
        # --export left the partial export beside a manifest saying complete)
        m = _manifest(tmp_path, "demo_shop", "cut")
        assert m["complete"] and m["export"]["rows"] == m["items"] == 40, m


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_to_fleet_run_stops_it_like_its_deadline(sig: signal.Signals, redis_url: str, tmp_path: Path) -> None:
    """Kubernetes stops a CronJob pod with SIGTERM to `fleet run` (PID 1 there); systemd or `timeout` send it to
    the whole process group, and a terminal's Ctrl-C sends SIGINT to it (which left exit 130, no summary and a
    manifest saying the run was still being worked on). Sent here to the group: each worker gets it directly and
    SIGTERM from `fleet run` within 2 s, which is the same stop (not the forced exit 130): the workers stop
    gracefully, their leases go back to READY, and the summary and exit code say the run is incomplete."""
    with DemoSite(n_products=40, per_page=10, latency=1.0).start() as site:
        env = fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=site.start_url, FLEET_CONCURRENCY="2",
                        FLEET_SHUTDOWN_GRACE="1")
        proc = subprocess.Popen([sys.executable, "-m", "scraper.cli", "run", "demo_shop", "--run", "term"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while counts(redis_url, "demo_shop")["inflight"] == 0:  # the workers are fetching
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.2)
            os.killpg(proc.pid, sig)
            out, errs = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
        summary = json.loads(out.strip().splitlines()[-1])
        assert proc.returncode == 5 and summary["deadline_passed"] and summary["terminated"], (summary, errs[-2000:])
        assert summary["worker_exit_codes"] == [0], summary
        assert summary["done"] < summary["seen"], summary
        c = counts(redis_url, "demo_shop")
        assert c["inflight"] == 0 and c["ready"] > 0, c  # leases released, nothing held, nothing lost
        assert _manifest(tmp_path, "demo_shop", "term")["complete"] is False


STUCK = '''
import asyncio
import scrapy

class Stuck(scrapy.Spider):
    name = "stuck"

    async def parse(self, response):
        if response.url.endswith("/stuck"):
            await asyncio.sleep(3600)  # a callback awaiting something that never comes
        yield {"url": response.url}
'''



def test_a_worker_forced_out_by_a_stuck_callback_still_reports_its_outcomes(redis_url: str, tmp_path: Path) -> None:
    """The deadline stops the workers; one callback never returns, so Scrapy's close never finishes and the
    worker takes its last-resort exit (grace + SHUTDOWN_CLOSE_WAIT): its leases go back, and the pages it did
    finish are still in the summary's outcomes and objects (its stats file is written on that path too)."""
    with loopback.serving(loopback.OkPages) as base:
        env = spider_module_env(redis_url, tmp_path, "stuck_spiders", STUCK, FLEET_SHUTDOWN_GRACE="1")
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{base}/{p}\n" for p in ("a", "b", "c", "stuck")))
        code, summary = _run("stuck", "--urls", str(urls), "--run", "r1", "--deadline", "8", env=env, timeout=90)
    assert code == 5 and summary["deadline_passed"] and summary["pending"] == 1, summary
    assert summary["outcomes"] == {"ok": 3} and summary["objects"] == 3, summary
    assert summary["worker_exit_codes"] == [0], summary
    c = counts(redis_url, "stuck")
    assert c["inflight"] == 0 and c["ready"] == 1, c  # the stuck request's lease went back


def test_another_runs_backlog_does_not_make_a_run_incomplete(redis_url: str, tmp_path: Path) -> None:
    """Two runs of one spider: run `other` has a request waiting in DELAYED (a retry due in an hour), so
    the workers of `fleet run --run mine` never see the spider idle and the deadline stops them. `mine`
    itself drained: its summary counts its own backlog (none), not the spider's, and it exits 0."""
    env = fleet_env(redis_url, tmp_path, FLEET_SHUTDOWN_GRACE="1")
    seeded = fleet_json("seed", "demo_shop", "--url", "http://127.0.0.1:9/later", "--run", "other", env=env)
    assert seeded["enqueued"] == 1

    async def delay(q: Any, _client: Any) -> None:
        batch = await q.lease(1, worker="test", lease_seconds=30)
        (lease,) = batch.leased
        assert await q.nack(lease.id, lease.token, Envelope.loads(lease.raw.decode()), time.time() + 3600)

    queue_session(redis_url, "demo_shop", delay)
    with DemoSite(n_products=10, per_page=10).start() as site:
        env["FLEET_DEMO_URL"] = site.start_url
        code, summary = _run("demo_shop", "--run", "mine", "--deadline", "10", "--idle", "1", env=env)  # 6 s was short on a loaded host
    assert summary["deadline_passed"] and summary["seen"] == summary["done"] == 11, summary  # 1 list page + 10 products
    assert summary["pending"] == 0 and summary["parked"] == 0 and summary["backlog_scope"] == "run", summary
    assert code == 0, summary  # before: "1 requests still queued", exit 5, from run other's retry
    assert counts(redis_url, "demo_shop")["delayed"] == 1  # run other's request is still there, untouched
    manifest = _manifest(tmp_path, "demo_shop", "mine")
    assert manifest["complete"] is True and manifest["counts"]["queued"] == {"ready": 0, "inflight": 0, "delayed": 0}


def test_resume_of_an_unknown_run_is_a_bad_argument(redis_url: str, tmp_path: Path) -> None:
    """Exit 2, like `--resume` of a cancelled run and `fleet cancel` of a run the spider never had (README:
    2 bad arguments); --resume with --run is a usage error, exit 1."""
    env = fleet_env(redis_url, tmp_path)
    res = fleet("run", "demo_shop", "--resume", "never-seeded", env=env)
    assert res.returncode == 2 and "no run 'never-seeded'" in res.stderr
    res = fleet("run", "demo_shop", "--resume", "x", "--run", "y", env=env)
    assert res.returncode == 1


@pytest.mark.parametrize(("summary", "code"), [
    ({"worker_exit_codes": [0, 3], "spider": "s", "run": "r"}, 3),
    ({"worker_exit_codes": [0], "parked": 2, "dlq": 1, "spider": "s", "run": "r"}, 5),
    ({"worker_exit_codes": [0], "breakers_open": ["a.example"], "spider": "s", "run": "r"}, 0),  # another run's
    ({"worker_exit_codes": [0], "breakers_open": ["a.example"], "parked": 1, "spider": "s", "run": "r"}, 5),
    ({"worker_exit_codes": [0, 1], "spider": "s", "run": "r"}, 1),
    ({"worker_exit_codes": [-9, 1], "spider": "s", "run": "r"}, 3),
    ({"worker_exit_codes": [0], "deadline_passed": True, "pending": 4, "spider": "s", "run": "r"}, 5),
    ({"worker_exit_codes": [0], "deadline_passed": True, "pending": 0, "spider": "s", "run": "r"}, 0),
    ({"worker_exit_codes": [0], "dlq": 1, "rejected": 2, "spider": "s", "run": "r"}, 4),
    ({"worker_exit_codes": [0], "rejected": 2, "spider": "s", "run": "r"}, 2),
    ({"worker_exit_codes": [0], "pending": 3, "spider": "s", "run": "r"}, 5),
    ({"worker_exit_codes": [0], "dlq": 1, "spider": "s", "run": "r"}, 4),
    ({"worker_exit_codes": [0], "dlq": 0, "parked": 0, "spider": "s", "run": "r"}, 0),
])
def test_exit_code_table(summary: dict, code: int) -> None:
    assert exit_code(summary)[0] == code


def test_the_summary_counts_this_runs_objects_only(redis_url: str, tmp_path: Path) -> None:
    """The workers of `fleet run --run mine` also work off run `other`'s queued requests (workers serve every run of
    the spider): `objects` and `items` are this run's (from its tally), not everything the workers wrote."""
    with loopback.serving(loopback.OkPages) as base:
        env = spider_module_env(redis_url, tmp_path, "stuck_spiders", STUCK)
        other = fleet_json("seed", "stuck", "--url", f"{base}/o1", "--url", f"{base}/o2", "--run", "other", env=env)
        assert other["enqueued"] == 2
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{base}/m1\n")
        code, summary = _run("stuck", "--urls", str(urls), "--run", "mine", env=env)
    assert code == 0 and summary["done"] == 1, summary
    assert summary["objects"] == 1 and summary["items"] == 1, summary  # was 3: run other's two as well
    assert len(objects(tmp_path / "data", "items", "stuck", "other")) == 2  # other's were done too


def test_bad_proxies_or_a_file_store_with_credentials_are_refused_before_seeding(redis_url: str, tmp_path: Path) -> None:
    """A FLEET_PROXIES every worker refuses was found only after `fleet run` had seeded the run (exit 1 with work
    queued and no worker); a file:// store URI with user:secret@ named a directory after the secret and printed it
    in every summary and manifest."""
    import redis

    for extra in ({"FLEET_PROXIES": "not a proxy::"}, {"FLEET_STORE": "file://user:FS3CR3T@host/x"}):
        env = fleet_env(redis_url, tmp_path, **extra)
        res = fleet("run", "demo_shop", "--run", "r1", env=env)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, (extra, res.stderr[-2000:])
        assert "FS3CR3T" not in res.stderr + res.stdout
        r = redis.Redis.from_url(redis_url)
        try:
            assert not r.keys("fleet:{demo_shop}:*"), extra  # nothing seeded
        finally:
            r.close()


def test_a_spiders_data_stays_in_one_store(redis_url: str, tmp_path: Path) -> None:
    """A worker takes every run's work and writes it to its own FLEET_STORE, relative to its directory by default:
    a `fleet run` in another directory stored a cut run's items there while the run's manifest, in the first
    store, said complete over an empty directory. Now the spider's store and each run's are recorded in Redis: a
    process with another store is refused (exit 1, one line) while the spider has work, and a run is always worked
    and refreshed with its own store. A worker records its store once it has written there (a store that never took
    an object, a wrong FLEET_STORE fixed, binds nothing: test_redirect_dedup's first worker)."""
    with DemoSite(n_products=40, per_page=10, latency=0.5).start() as site:
        a, b = tmp_path / "a", tmp_path / "b"
        env_a = fleet_env(redis_url, a, FLEET_DEMO_URL=site.start_url, FLEET_CONCURRENCY="2")
        env_b = fleet_env(redis_url, b, FLEET_DEMO_URL=site.start_url, FLEET_CONCURRENCY="2")
        assert env_a["FLEET_STORE"] != env_b["FLEET_STORE"]
        cut = fleet("run", "demo_shop", "--run", "cut", "--deadline", "6", env=env_a, timeout=120)
        assert cut.returncode == 5 and list(a.rglob("*.jsonl")), cut.stderr[-2000:]  # some written, then cut
        other = fleet("run", "demo_shop", "--run", "other", env=env_b, timeout=60)  # work of `cut` is queued
        assert other.returncode == 1 and "would be split" in other.stderr, other.stderr[-2000:]
        assert len(other.stderr.strip().splitlines()) == 1
        worker = fleet("worker", "demo_shop", "--until-idle", "1", env=env_b, timeout=60)
        assert worker.returncode == 1 and "would be split" in worker.stderr, worker.stderr[-2000:]
        done = fleet("run", "demo_shop", "--resume", "cut", env=env_a, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        again = fleet("run", "demo_shop", "--resume", "cut", env=env_b, timeout=60)  # idle now, but cut's data is in a
        assert again.returncode == 1 and "keeps its data in store" in again.stderr, again.stderr[-2000:]
        refresh = fleet("runs", "demo_shop", "--refresh", env=env_b, timeout=60)  # no manifest of a run into b
        assert "keeps its data in store" in refresh.stderr, refresh.stderr[-2000:]
        assert not list(b.rglob("manifest.json")), list(b.rglob("manifest.json"))
        moved = fleet("run", "demo_shop", "--run", "new", env=env_b, timeout=180)  # drained: the spider may move
        assert moved.returncode == 0, moved.stderr[-2000:]
        assert list(b.rglob("manifest.json")) and list(b.rglob("*.jsonl"))

"""`fleet smoke` runs in `make test`: the kill-before-ack smoke test, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fleetproc import fleet, fleet_env

pytestmark = pytest.mark.integration


def test_fleet_smoke_passes(redis_url: str, tmp_path: Path) -> None:
    env = fleet_env(redis_url, tmp_path)
    res = fleet("smoke", env=env, timeout=240)
    assert res.returncode == 0, f"fleet smoke exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout)
    assert report, "fleet smoke printed an empty report"

"""CLI arguments that cannot be right are usage errors (exit 2) with a message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleetproc import fleet, fleet_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("args", [
    ["status", "bad name!"], ["dlq", "bad name!"], ["breakers", "reset", "bad name!", "shop.test"],
    ["export", "bad name!", "--run", "r1"], ["seed", "bad name!", "--url", "http://127.0.0.1:9/"],
])
def test_every_command_refuses_a_spider_name_that_cannot_be_a_queue(redis_url: str, tmp_path: Path,
                                                                    args: list[str]) -> None:
    """A usage error (exit 2) that says what is wrong, not a traceback (status, dlq, breakers) or an
    empty Parquet export written for a spider that cannot exist (export)."""
    res = fleet(*args, env=fleet_env(redis_url, tmp_path))
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    assert "Invalid value for 'spider'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "data").exists()

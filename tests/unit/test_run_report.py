"""fleet run's exit code for a run that was cancelled while it ran (scraper.cli.runreport.exit_code)."""

from __future__ import annotations

from scraper.cli.common import EXIT_INCOMPLETE
from scraper.cli.runreport import exit_code


def test_a_cancelled_run_is_incomplete_without_a_resume_hint() -> None:
    code, why = exit_code({"spider": "s", "run": "r", "worker_exit_codes": [0], "cancelled": True, "dlq": 0})
    assert code == EXIT_INCOMPLETE and "cancelled" in why and "--resume" not in why


def test_a_drained_run_is_not() -> None:
    assert exit_code({"spider": "s", "run": "r", "worker_exit_codes": [0], "cancelled": False}) == (0, "")

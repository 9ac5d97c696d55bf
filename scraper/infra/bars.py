"""What every Fleet progress bar is built from: the stderr console, the rate column and its window, the layout.

Why a module of its own: ``fleet run``'s, ``fleet seed --urls``'s and ``fleet export``'s bars
(``scraper.infra.progress``) look alike on purpose (spinner, title, bar, their figures, rate, elapsed
time), and were each built by hand; :func:`bar` builds that layout once, so they cannot drift apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

__all__ = [
    "Rate",
    "Window",
    "bar",
    "stderr_console",
]


def stderr_console() -> Console:
    """Bars and the lines printed above them go to stderr: stdout carries the commands' JSON results."""
    return Console(stderr=True, highlight=False)


class Rate(ProgressColumn):
    """Pages (or URLs, records) a second, from the ``rate`` field its owner computes."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        if rate is None:
            return Text(f"- {self.unit}/s", style="progress.data.speed")
        return Text(
            f"{rate:,.1f} {self.unit}/s" if rate < 10 else f"{rate:,.0f} {self.unit}/s", style="progress.data.speed"
        )


class Window:
    """Rate over the last few seconds while running (what the crawl does now), the average at the end."""

    def __init__(self, seconds: float = 5.0) -> None:
        self.samples: deque[tuple[float, int]] = deque()
        self.seconds = seconds
        self.started = time.monotonic()

    def add(self, value: int) -> float | None:
        now = time.monotonic()
        self.samples.append((now, value))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.seconds:
            self.samples.popleft()
        t0, v0 = self.samples[0]
        return (value - v0) / (now - t0) if now - t0 >= 0.5 else None

    def average(self, value: int) -> float | None:
        spent = time.monotonic() - self.started
        return value / spent if spent > 0 else None


def bar(figures: Sequence[str], unit: str, after: Sequence[str] = ()) -> Progress:
    """``⠋ title ━━━━━━━ <figures> · <rate> unit/s <elapsed> <after>``, not started.

    ``figures`` and ``after`` are TextColumn formats over the task's fields; the title is the task's
    description. Log lines written to stderr while the bar is up print above it (rich's
    ``redirect_stderr``); stdout is left alone."""
    return Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(bar_width=30),
        *(TextColumn(f) for f in figures),
        TextColumn("[dim]·[/]"),
        Rate(unit),
        TimeElapsedColumn(),
        *(TextColumn(f) for f in after),
        console=stderr_console(),
        redirect_stdout=False,
        redirect_stderr=True,
        refresh_per_second=8,
    )

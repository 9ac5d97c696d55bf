"""Progress bars for a person at a terminal: ``fleet run``, ``fleet demo``, ``fleet seed --urls`` and
``fleet export``.

Why a separate module and a separate channel: the JSON on stdout is what cron and scripts parse, and
stderr's JSON lines are what log shippers read, so a bar must never reach either. It is drawn with
rich on stderr only when :func:`enabled` says a person is watching: stderr is a terminal, the log
format is not forced to JSON, CI is unset and the terminal is not ``dumb``. Otherwise every function
here does nothing and the output is byte for byte what it was without this module.

The run bar reads its figures from Redis on a timer in the parent process (the workers are other
processes, or Scrapy's reactor in this one): pages done / seen of the run (DONE and SEEN counts), the
run's DLQ entries (read incrementally from the DLQ stream), and items, which Redis does not hold: the
caller supplies them (the demo's crawler stats, or the ``object_written`` events of ``fleet run``'s
workers, whose stderr the parent reads while the bar is up so their lines print above it).

The three bars share one layout and their rate column (``scraper.infra.bars``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from rich.progress import Progress, TaskID
from rich.text import Text

from scraper.infra import console as logconsole
from scraper.infra.bars import Window, bar, stderr_console

__all__ = [
    "LINES_PER_SECOND",
    "POLL_INTERVAL",
    "SEED_BAR_MIN_BYTES",
    "ExportProgress",
    "RunProgress",
    "display_level",
    "enabled",
    "track_urls",
]
_T = TypeVar("_T")

POLL_INTERVAL = 0.5  # seconds between Redis reads: cheap (a pipeline of three commands), fresh enough to read
SEED_BAR_MIN_BYTES = 1 << 20  # a --urls file smaller than this seeds in about a second: no bar
_LINE_MAX = 1 << 16  # a worker's stderr is read in lines of at most this many bytes (bounded memory)
LINES_PER_SECOND = 40  # a worker's log lines printed above the bar at most, errors aside


def enabled(log_format: str = "auto", stream: Any = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether to draw progress: only for a person at a terminal.

    ``log_format`` is FLEET_LOG_FORMAT as configured; ``json`` means the caller wants machine output even
    on a terminal. CI (any value but empty/0/false/no) means a terminal nobody watches live."""
    e = os.environ if env is None else env
    if log_format == "json":
        return False
    if (e.get("CI") or "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if e.get("TERM") == "dumb":
        return False
    return logconsole.isatty(sys.stderr if stream is None else stream)


class RunProgress:
    """The bar of one crawl run: ``⠋ spider ━━━━━━━ 105/220 pages · 98 items · DLQ 0 · 41 pages/s · 0:00:03``.

    A context manager; entering it when :func:`enabled` is false is allowed and does nothing, so callers
    have one code path. The poll thread never raises: Redis unreachable shows in the bar and the last
    figures stay (the run's own code reports the outage)."""

    def __init__(
        self,
        redis_url: str,
        spider: str,
        run: str,
        *,
        show: bool = True,
        items: Callable[[], int | None] | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.redis_url = redis_url
        self.spider = spider
        self.run = run
        self.show = show
        self.interval = interval
        self._items_fn = items
        self._items_seen = 0  # object_written items forwarded from workers (fleet run)
        self._items_known = items is not None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pumps: list[threading.Thread] = []
        self._dlq_last: dict[int, str] = {}  # per shard: the last DLQ stream id counted
        self._shards: list[Any] | None = None
        self._dlq = 0
        self._seen = self._done = 0
        self._window = Window()
        self._client: Any = None
        self.progress: Progress | None = None
        self._task: TaskID | None = None

    # -- figures ------------------------------------------------------------------------------

    def _poll(self) -> bool:
        """Read SEEN/DONE counts and new DLQ entries of the run; False when Redis did not answer."""
        import redis

        from scraper.queue import redisio
        from scraper.queue.keys import Keys, shard_count

        try:
            if self._client is None:
                self._client = redisio.sync_client(self.redis_url, socket_timeout=5, socket_connect_timeout=5)
            if self._shards is None:  # a spider split into shards (scraper.queue.shards): each is read
                n = shard_count(self._client.get(Keys(self.spider).shards))
                self._shards = [Keys(self.spider, i, n) for i in range(n)]
            pipe = self._client.pipeline(transaction=False)
            for keys in self._shards:
                pipe.hget(keys.seen(self.run), "count")
                pipe.hget(keys.done(self.run), "count")
            res = pipe.execute()
            self._seen, self._done = sum(int(x or 0) for x in res[::2]), sum(int(x or 0) for x in res[1::2])
            for keys in self._shards:
                self._poll_dlq(keys)
            return True
        except (redis.exceptions.RedisError, OSError):
            return False

    def _poll_dlq(self, keys: Any) -> None:
        """Count the run's DLQ entries new since the last tick in one shard's stream."""
        for _ in range(10):  # at most 5,000 new DLQ entries a tick; the rest at the next one
            last = self._dlq_last.get(keys.shard, "-")
            rows = self._client.xrange(keys.dlq, min="-" if last == "-" else "(" + last, max="+", count=500)
            for rid, fields in rows or []:
                run = fields.get(b"run") if isinstance(fields, dict) else None
                if run is not None and run.decode("utf-8", "replace") == self.run:
                    self._dlq += 1
                self._dlq_last[keys.shard] = rid.decode() if isinstance(rid, bytes) else str(rid)
            if not rows or len(rows) < 500:
                break

    def _items(self) -> int | None:
        if self._items_fn is not None:
            try:
                return self._items_fn()
            except Exception:  # a crawler not built yet, stats gone: not the bar's business to fail
                return None
        with self._lock:
            return self._items_seen if self._items_known else None

    def _draw(self, ok: bool, final: bool = False) -> None:
        if self.progress is None or self._task is None:
            return
        seen, done = self._seen, self._done
        rate = self._window.average(done) if final else self._window.add(done)
        items = self._items()
        # while running, total stays above done: rich freezes a task's clock once completed >= total,
        # and SEEN grows as pages are discovered
        total = max(seen, done) if final else max(seen, done + 1)
        self.progress.update(
            self._task,
            total=total,
            completed=done,
            seen=seen,
            done=done,
            rate=rate,
            items="-" if items is None else f"{items:,}",
            dlq=f"[bold red]DLQ {self._dlq:,}[/]" if self._dlq else "DLQ 0",
            note="" if ok else "[yellow](Redis not answering)[/]",
        )

    def _loop(self) -> None:
        while True:
            self._draw(self._poll())
            if self._stop.wait(self.interval):
                return

    # -- worker stderr ------------------------------------------------------------------------

    def forward(self, stream: IO[bytes], display_level: int = logging.WARNING) -> None:
        """Print a worker's stderr (JSON lines) above the bar as console lines, those at
        ``display_level`` and up; count the items of its ``object_written`` events."""
        with self._lock:
            self._items_known = True
        t = threading.Thread(target=self._pump, args=(stream, display_level), daemon=True, name="fleet-progress-pump")
        t.start()
        self._pumps.append(t)

    def _pump(self, stream: IO[bytes], display_level: int) -> None:
        """Reads to the end whatever happens: a worker blocked on a full stderr pipe would stop leasing,
        extending and acking. Lines below ERROR beyond :data:`LINES_PER_SECOND` are counted, not
        printed: drawing a line costs this process far more than writing it cost the worker."""
        console = self.progress.console if self.progress is not None else stderr_console()
        colors = logconsole.wants_colors()
        budget, refilled, dropped = float(LINES_PER_SECOND), time.monotonic(), 0
        printing = True
        for raw in iter(lambda: stream.readline(_LINE_MAX), b""):
            if not printing:
                continue
            try:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                event = logconsole.parse_event(line)
                if event is not None:
                    if event.get("event") == "object_written" and type(event.get("items")) is int:
                        with self._lock:
                            self._items_seen += event["items"]
                    level = logging.getLevelName(str(event.get("level", "info")).upper())
                    level = level if isinstance(level, int) else logging.INFO
                    if level < display_level:
                        continue
                    text = logconsole.render_console(event, colors)
                elif line:
                    level, text = logging.WARNING, logconsole.console_line(line, colors)
                else:
                    continue
                now = time.monotonic()
                budget = min(float(LINES_PER_SECOND), budget + (now - refilled) * LINES_PER_SECOND)
                refilled = now
                if level < logging.ERROR:
                    if budget < 1:
                        dropped += 1
                        continue
                    budget -= 1
                if dropped:
                    console.print(
                        Text(
                            f"... {dropped:,} lines of this worker not shown (too many to read; "
                            "FLEET_LOG_FORMAT=json prints every one)",
                            style="dim",
                        )
                    )
                    dropped = 0
                console.print(Text.from_ansi(text) if colors else Text(text), soft_wrap=True)
            except Exception:  # the terminal went away, a line rich cannot draw: keep draining the pipe
                printing = False
        if dropped and printing:
            try:
                console.print(Text(f"... {dropped:,} lines of this worker not shown", style="dim"))
            except Exception:
                pass

    def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until the forwarded streams reached their end: the workers' last lines print."""
        deadline = time.monotonic() + timeout
        for t in self._pumps:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- context ------------------------------------------------------------------------------

    def __enter__(self) -> RunProgress:
        if not self.show:
            return self
        self.progress = bar(
            [
                "{task.fields[done]:,}/{task.fields[seen]:,} pages",
                "[dim]·[/] {task.fields[items]} items [dim]·[/]",
                "{task.fields[dlq]}",
            ],
            "pages",
            ["{task.fields[note]}"],
        )
        self._task = self.progress.add_task(
            self.spider, total=None, seen=0, done=0, rate=None, items="-", dlq="DLQ 0", note=""
        )
        self.progress.start()
        t = threading.Thread(target=self._loop, daemon=True, name="fleet-progress")
        t.start()
        self._threads.append(t)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is None:
            return
        self._stop.set()
        for t in self._threads:
            t.join(5.0)
        self.drain(2.0)
        self._draw(self._poll(), final=True)
        self.progress.stop()
        if self._client is not None:
            self._client.close()


def display_level(env: Mapping[str, str] | None = None) -> int:
    """What ``fleet run`` prints of its workers' events under a bar: FLEET_LOG_LEVEL when it is set, else
    WARNING (the bar is the summary of the per-request INFO events)."""
    e = os.environ if env is None else env
    raw = (e.get("FLEET_LOG_LEVEL") or "").strip().upper()
    level = logging.getLevelName(raw) if raw else logging.WARNING
    return level if isinstance(level, int) else logging.WARNING


# --------------------------------------------------------------------------------------------
# fleet seed --urls
# --------------------------------------------------------------------------------------------


def track_urls(urls: Iterable[_T], source: str, *, show: bool, label: str = "seeding") -> Iterator[_T]:
    """``urls`` as they are, with a bar of the file read so far (bytes, approximate: a URL's length plus
    its newline) when ``show`` and the file is at least :data:`SEED_BAR_MIN_BYTES`, or a counter for a
    piped stdin. Small files get no bar: they are done before a bar would be legible."""
    total: int | None = None
    if show and source != "-":
        try:
            total = Path(source).stat().st_size
        except OSError:
            show = False
        else:
            show = total >= SEED_BAR_MIN_BYTES
    elif show:
        show = not logconsole.isatty(sys.stdin)  # a person typing URLs needs no bar
    if not show:
        yield from urls
        return
    progress = bar(["{task.fields[count]:,} URLs"], "URLs")
    task = progress.add_task(label, total=total, count=0, rate=None)
    window = Window()
    read = count = 0
    last = 0.0
    progress.start()
    try:
        for url in urls:
            count += 1
            read += (len(url) if isinstance(url, str) else 80) + 1  # a refused line: roughly
            now = time.monotonic()
            if now - last >= 0.1:
                last = now
                progress.update(
                    task, completed=min(read, total - 1) if total else read, count=count, rate=window.add(count)
                )
            yield url
        progress.update(task, total=total or read, completed=total or read, count=count, rate=window.average(count))
    finally:
        progress.stop()


# --------------------------------------------------------------------------------------------
# fleet export
# --------------------------------------------------------------------------------------------


class ExportProgress:
    """Objects read of a run's items (the export's long part, one GET each), then the write. Calling it
    is the export's progress callback: ``(objects read, objects in all)``; ``phase`` names the step."""

    def __init__(self, spider: str, run: str, *, show: bool) -> None:
        self.show = show
        self.label = f"export {spider} {run}"
        self.progress: Progress | None = None
        self._task: TaskID | None = None
        self._window = Window()
        self._last = 0.0

    def __enter__(self) -> ExportProgress:
        if self.show:
            self.progress = bar(["{task.fields[n]:,}/{task.fields[of]} objects"], "objects", ["{task.fields[phase]}"])
            self._task = self.progress.add_task(self.label, total=None, n=0, of="?", rate=None, phase="listing")
            self.progress.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None or self._task is None:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        # completed < total until the file is written: the clock runs through the write
        self.progress.update(
            self._task,
            total=total + 1,
            completed=done,
            n=done,
            of=f"{total:,}",
            rate=self._window.add(done),
            phase="reading" if done < total else "writing",
        )

    def phase(self, name: str) -> None:
        if self.progress is not None and self._task is not None:
            self.progress.update(self._task, phase=name)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is None or self._task is None:
            return
        if exc_type is None:
            done = int(self.progress.tasks[0].fields.get("n", 0))
            self.progress.update(self._task, total=1, completed=1, rate=self._window.average(done), phase="")
        self.progress.stop()

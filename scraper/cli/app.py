"""The ``fleet`` command line (docs/architecture.md, "CLI and exit codes").

Results that scripts read (seed counts, run summaries, ``--json`` views) go to stdout as JSON; logs go
to stderr as JSON events. Exit codes: 0 success, 1 usage or configuration error, 2 bad arguments
(typer; or input URLs ``fleet seed`` rejected), 3 infrastructure failure (Redis/store unreachable), 4 a
run finished with requests in the DLQ, 5 a run ended incomplete (parked requests, an open breaker, work
left, or ``--deadline`` passed).
"""

from __future__ import annotations

import typer

from scraper.cli import cancel, crawl, data, dev, inspect, oncall, runs

__all__ = ["app", "main"]

app = typer.Typer(
    help="Fleet: a Scrapy worker fleet fed from one leased Redis queue. "
    "Nothing lost when a worker dies, nothing written twice when a request is retried.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Registration order is the order of `fleet --help`.
for group in (crawl, inspect, runs, oncall, cancel, data, dev):
    app.add_typer(group.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

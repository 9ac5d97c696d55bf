"""``python -m scraper.cli``: the ``fleet`` command without the console script (what tests and smoke run)."""

from scraper.cli.app import main

main()

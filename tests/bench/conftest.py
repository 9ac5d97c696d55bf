"""The bench is run by `make bench` (python -m tests.bench.run), never collected by pytest."""

collect_ignore_glob = ["*.py"]

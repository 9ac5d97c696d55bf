"""The ``fleet`` command: one module per command group, the shared steps in common, and the processes
(seeding, a worker, the demo) that several commands run.
"""

__all__ = [
    "app",
    "args",
    "cancel",
    "common",
    "crawl",
    "data",
    "demo",
    "dev",
    "inspect",
    "manifests",
    "oncall",
    "replay",
    "runreport",
    "runs",
    "seeding",
    "worker",
]

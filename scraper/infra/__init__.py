"""Process plumbing shared by every command: FLEET_* configuration, embedded Redis, structured logs,
progress bars and the Prometheus backlog exporter.
"""

__all__ = [
    "bars",
    "config",
    "console",
    "embedded",
    "log",
    "metrics",
    "progress",
    "redact",
    "redishome",
]

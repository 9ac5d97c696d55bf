"""Object stores and the objects in them: backends chosen by URI scheme (file://, s3://), the local
group-commit writer process, deterministic object keys, outage tracking and the export reader.
"""

__all__ = [
    "backends",
    "base",
    "dedup",
    "export",
    "filewriter",
    "health",
    "local",
    "manifest",
    "objects",
    "parts",
    "s3",
]

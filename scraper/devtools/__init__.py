"""The demo catalogue site and ``fleet smoke``: things that exist to show or check Fleet, not to run it.
"""

__all__ = [
    "demo_site",
    "smoke",
]

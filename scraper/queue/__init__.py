"""The shared Redis queue: versioned JSON envelopes, the FleetQueue client and its Lua scripts (lua/*.lua).

Everything that touches the queue's keys lives here; the worker reaches it through worker.queueport. The fleet's
robots.txt cache (robots.py) lives here too: it is shared Redis state, keyed per site.
"""

__all__ = [
    "client",
    "entrycheck",
    "envelope",
    "fingerprint",
    "names",
    "redisio",
    "robots",
    "scripts",
]

"""The shared Redis queue: versioned JSON envelopes, the FleetQueue client and its Lua scripts (lua/*.lua).

Everything that touches the queue's keys lives here; the worker reaches it through worker.queueport.
"""

__all__ = [
    "cancel",
    "client",
    "entrycheck",
    "envelope",
    "fingerprint",
    "inspection",
    "keys",
    "names",
    "records",
    "redisio",
    "robots",
    "runstate",
    "scripts",
    "seedwire",
    "shards",
    "startfp",
    "startkeys",
]

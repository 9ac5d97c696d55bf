"""Which child a worker speculates on (``feeder.Speculation``): a pure choice over the page's children and
what this worker already knows is queued.

Why: a speculative fetch starts before COMMIT says whether the child was really queued; when it was not (its
URL was SEEN), the fetch is thrown away, but the site has already been asked. Taking READY's next child
blindly (the last link of the highest priority) asked sites again and again for pages every page links
to, such as a footer link or a pager link repeated at the bottom of the page: the site saw each such URL
once more per page than under Scrapy. So the choice skips children this worker knows are queued, and for
a URL the page links to twice it claims the link COMMIT queues, the first one.
"""

from __future__ import annotations

from collections.abc import Sequence

from scraper.queue.envelope import Envelope

__all__ = ["RECENT_MAX", "RecentChildren", "pick"]

#: how many (run, fingerprint) pairs a worker remembers (~100 bytes each)
RECENT_MAX = 50_000


class RecentChildren:
    """The (run, fingerprint) pairs this worker last saw queued or fetched, oldest forgotten first.

    A hint only, either way: a pair missing here may still be SEEN (another worker queued it), which
    COMMIT's claim settles as before; a pair present here was fetched, or queued by a commit on its way
    (should that commit never land, the child is only fetched the ordinary way: leased, not speculated)."""

    __slots__ = ("_max", "_seen")

    def __init__(self, limit: int = RECENT_MAX) -> None:
        self._max = limit
        self._seen: dict[tuple[str, str], None] = {}

    def __contains__(self, pair: object) -> bool:
        return pair in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, run: str, fp: str) -> None:
        seen = self._seen
        seen[(run, fp)] = None
        if len(seen) > self._max:
            del seen[next(iter(seen))]


def pick(kids: Sequence[Envelope], known: RecentChildren) -> int | None:
    """The index of the child to speculate on, or None.

    READY's order decides (LIFO: the last child of the highest priority first); a child this worker knows
    is queued is passed over for the next; a filtered child whose URL the page links to earlier is claimed
    at its first link, the one COMMIT queues (the later ones are SEEN by then). A ``dont_filter`` child is
    queued whatever SEEN says, so it is taken as it is."""
    first: dict[str, int] = {}
    for i, env in enumerate(kids):
        first.setdefault(env.fp, i)
    for i in sorted(range(len(kids)), key=lambda i: (kids[i].priority, i), reverse=True):
        env = kids[i]
        if env.dont_filter:
            return i
        if (env.run, env.fp) in known:
            continue
        return first[env.fp]
    return None

"""The choice of the child a worker speculates on (scraper.worker.specpick): READY's next child (LIFO, highest
priority), passing over what this worker knows is queued, and a URL linked twice claimed at its first link,
the one COMMIT queues."""

from __future__ import annotations

from scraper.queue.envelope import Envelope
from scraper.worker.specpick import RecentChildren, pick


def kid(fp: str, *, priority: int = 0, dont_filter: bool = False, run: str = "r") -> Envelope:
    return Envelope(url=f"https://a.example/{fp}", spider="s", run=run, fp=fp * 16, priority=priority,
                    dont_filter=dont_filter)


def test_readys_next_child_is_the_last_of_the_highest_priority() -> None:
    assert pick([kid("1"), kid("2"), kid("3")], RecentChildren()) == 2
    assert pick([kid("1", priority=5), kid("2"), kid("3")], RecentChildren()) == 0
    assert pick([], RecentChildren()) is None


def test_a_url_linked_twice_is_claimed_at_its_first_link() -> None:
    # a pager link at the top and at the bottom of the page: COMMIT queues the first, the second is SEEN
    assert pick([kid("9"), kid("1"), kid("2"), kid("9")], RecentChildren()) == 0
    # a dont_filter child is queued whatever SEEN says: taken where it is
    assert pick([kid("9"), kid("1"), kid("9", dont_filter=True)], RecentChildren()) == 2


def test_known_children_are_passed_over() -> None:
    known = RecentChildren()
    known.add("r", "9" * 16)
    assert pick([kid("1"), kid("2"), kid("9")], known) == 1
    assert pick([kid("9")], known) is None
    assert pick([kid("9", run="other")], known) == 0  # another run's SEEN is another set
    assert pick([kid("9", dont_filter=True)], known) == 0


def test_recent_children_forget_the_oldest() -> None:
    known = RecentChildren(limit=3)
    for c in "1234":
        known.add("r", c * 16)
    assert len(known) == 3 and ("r", "1" * 16) not in known and ("r", "4" * 16) in known
    known.add("r", "2" * 16)  # already there: still 3
    assert len(known) == 3

"""scraper.worker.download keeps cancelled download-timeout timers from piling up in the reactor."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import gc, sys
    from scrapy.utils.reactor import install_reactor
    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    from twisted.internet import reactor
    from twisted.internet.base import DelayedCall
    from scrapy.utils.test import get_crawler
    from scraper.worker.download import FleetHTTPDownloadHandler

    def alive():
        return sum(1 for o in gc.get_objects() if isinstance(o, DelayedCall) and o.cancelled)

    result = {}
    def start():
        if sys.argv[1] == "fleet":
            FleetHTTPDownloadHandler(get_crawler())
        for _ in range(2000):  # what 2,000 finished downloads leave behind: cancelled 30 s timers
            reactor.callLater(30, lambda: None).cancel()
        loop = reactor._asyncioEventloop
        # asyncio timers, not reactor ones: a reactor timer firing would itself purge the heap
        loop.call_later(0.8, lambda: (result.update(n=alive()), reactor.stop()))
    reactor.callWhenRunning(start)
    reactor.run()
    print(result["n"])
    """
)


def _cancelled_alive(kind: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, kind], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_cancelled_timers_are_purged_while_the_handler_is_open() -> None:
    assert _cancelled_alive("plain") >= 2000  # the problem: nothing fires, nothing is purged
    assert _cancelled_alive("fleet") < 100

"""Run one corpus spider under plain Scrapy (stock settings, no Fleet component): ``python -m
tests.parity.run_scrapy SPIDER OUT.jsonl``. The reference side of the parity suite."""

from __future__ import annotations

import sys

from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings
from scrapy.spiderloader import SpiderLoader

__all__ = ["main"]


def main(argv: list[str]) -> int:
    name, out = argv
    settings = Settings({
        "SPIDER_MODULES": ["tests.parity.corpus"],
        "FEEDS": {out: {"format": "jsonlines", "encoding": "utf-8"}},
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
        "REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7",
    })
    process = CrawlerProcess(settings)
    process.crawl(SpiderLoader.from_settings(settings).load(name))
    process.start()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Parity: CrawlSpider and SitemapSpider yield the same items under plain Scrapy and under Fleet."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.parity.harness import compare, diff
from tests.parity.site import DOC_PAGES, ParitySite

pytestmark = pytest.mark.integration


def test_crawlspider_start_url_rule_callback(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    """Issue #19: a page links back to the start URL with the rule's callback; plain Scrapy parses it
    (start requests are dont_filter and never recorded by its dupefilter), so must Fleet. The Rule's
    process_request returns None for the links to the last two pages: neither side follows them."""
    ref, got = compare("parity_docs_crawl", site.base, tmp_path, redis_url)
    assert f'"url": "{site.base}/docs/"' in "".join(ref), "the reference crawl parses the start URL by rule too"
    assert sum(ref.values()) == 1 + 1 + (DOC_PAGES - 2) + 1  # start, index by rule, pages, p1?ref=index
    assert got.code == 0, got.stderr[-2000:]
    assert not diff(ref, got.items), diff(ref, got.items)
    dropped = [hit for hit in site.hits if hit[1] in (f"/docs/p{DOC_PAGES - 1}", f"/docs/p{DOC_PAGES}")]
    assert not dropped, f"links process_request dropped were fetched: {dropped}"


def test_sitemap_index_gzip_robots_rules(site: ParitySite, tmp_path: Path, redis_url: str) -> None:
    ref, got = compare("parity_sitemap", site.base, tmp_path, redis_url)
    assert sum(ref.values()) == 5 + 4  # docs p1-p5, blog 1-4 (the gzip sitemap); /about matches no rule
    assert got.code == 0, got.stderr[-2000:]
    assert not diff(ref, got.items), diff(ref, got.items)


@pytest.mark.parametrize("spider,count", [("parity_xmlfeed", 5), ("parity_csvfeed", 5)])
def test_feed_spiders(site: ParitySite, tmp_path: Path, redis_url: str, spider: str, count: int) -> None:
    ref, got = compare(spider, site.base, tmp_path, redis_url)
    assert sum(ref.values()) == count
    assert got.code == 0, got.stderr[-2000:]
    assert not diff(ref, got.items), diff(ref, got.items)

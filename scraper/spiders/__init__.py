"""Fleet's bundled spiders (SPIDER_MODULES): the demo shop and the smoke spider."""

__all__ = ["demo_shop", "fleet_smoke"]

"""Re-export of :mod:`scraper.infra.config` (``FleetConfig``, ``ConfigError``) for code that imports it from here.

The ``FLEET_*`` variables are documented once, in the table at the top of scraper/infra/config.py.
"""

from scraper.infra.config import ConfigError, FleetConfig

__all__ = ["ConfigError", "FleetConfig"]

"""Re-export of :mod:`scraper.config` (``FleetConfig``, ``ConfigError``) for code that imports it from here.

The ``FLEET_*`` variables are documented once, in the table at the top of scraper/config.py.
"""

from scraper.config import ConfigError, FleetConfig

__all__ = ["ConfigError", "FleetConfig"]

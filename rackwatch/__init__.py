"""rackwatch: finds the bad machines of a MAAS + Testflinger lab before a real test run does."""

__version__ = "0.1.0"

"""tellonce: a tell-us-once data-sharing service for government."""

__version__ = "0.1.0"

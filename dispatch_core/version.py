"""The engine version stamped on every decision record."""

__version__ = "0.1.0"

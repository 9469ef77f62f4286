"""The version of ilit-core."""

__version__ = "0.1.0"

"""The version of ilit-metrics."""

__version__ = "0.1.0"

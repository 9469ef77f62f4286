"""The version of ilit-mxnet."""

__version__ = "0.1.0"

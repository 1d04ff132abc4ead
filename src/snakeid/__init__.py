"""snakeid: a DVC pipeline that turns snake photos into a small, fast species classifier."""

__version__ = "0.1.0"

"""streamproc: city-operations sensor stream processor."""

__version__ = "0.1.0"

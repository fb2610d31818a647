"""Persistent error log for APT Kernel runs (SQLite), and agreement on failures across ranks."""

from .logger import ErrorLogger

__version__ = "0.1.0"
__all__ = ["DistributedError", "DistributedErrorHandler", "ErrorLogger"]


def __getattr__(name: str):
    if name in ("DistributedError", "DistributedErrorHandler"):  # torch only when asked for: `errors list` stays fast
        from . import distributed

        return getattr(distributed, name)
    raise AttributeError(name)

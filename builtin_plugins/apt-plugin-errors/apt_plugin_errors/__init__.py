"""Persistent error log for APT Kernel runs (SQLite)."""

from .logger import ErrorLogger

__version__ = "0.1.0"
__all__ = ["ErrorLogger"]

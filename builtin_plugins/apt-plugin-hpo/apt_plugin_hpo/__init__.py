"""Optuna hyperparameter search over APT Kernel pipelines."""

from .searcher import HyperparameterSearcher, parse_space

__version__ = "0.1.0"
__all__ = ["HyperparameterSearcher", "parse_space"]

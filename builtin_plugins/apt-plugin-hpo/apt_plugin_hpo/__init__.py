"""Optuna hyperparameter search over APT Kernel pipelines."""

__version__ = "0.1.0"
__all__ = ["HyperparameterSearcher", "parse_space"]


def __getattr__(name: str):
    if name in __all__:  # optuna and torch only when asked for: loading the plugin (doctor, list) stays fast
        from . import searcher

        return getattr(searcher, name)
    raise AttributeError(name)

"""APT trainer plugin: training loop, CheckpointManager, and the one-call train_model API."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # torch is imported only when these are used, not when the plugin is discovered
    if name == "train_model":
        from .api import train_model

        return train_model
    if name == "CheckpointManager":
        from .checkpoint import CheckpointManager

        return CheckpointManager
    raise AttributeError(name)

"""APT trainer plugin: the training loop, early stopping, and CheckpointManager."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # torch is imported only when these are used, not when the plugin is discovered
    if name == "train_model":  # the original import path; it builds an LM pipeline (extra: apt-plugin-trainer[lm])
        try:
            from apt_plugin_lm.train import train_model
        except ImportError as exc:
            raise ImportError("train_model trains an APT language model: pip install 'apt-plugin-trainer[lm]'") from exc
        return train_model
    if name == "CheckpointManager":
        from .checkpoint import CheckpointManager

        return CheckpointManager
    raise AttributeError(name)

"""APT language model plugin: model, tokenizers, text data, LM loss, and ``train_model``."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # torch is imported only when this is used, not when the plugin is discovered
    if name == "train_model":
        from .train import train_model

        return train_model
    raise AttributeError(name)

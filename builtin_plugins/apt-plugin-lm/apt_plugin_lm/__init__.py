"""APT language model plugin: model, tokenizers, text data, LM loss."""

__version__ = "0.1.0"

"""APT language model plugin: model, tokenizers, text data, LM loss, and ``train_model``.

Importing it registers the APT architecture with ``transformers``' Auto classes (``hub_registration``), so an
exported model loads with ``AutoModelForCausalLM.from_pretrained`` without ``trust_remote_code``."""

from .hub_registration import register_with_transformers

__version__ = "0.1.0"

register_with_transformers()  # imports neither transformers nor torch: done when transformers loads its Auto classes


def __getattr__(name: str):
    # torch is imported only when this is used, not when the plugin is discovered
    if name == "train_model":
        from .train import train_model

        return train_model
    if name == "APTForCausalLM":
        from .modeling_apt import APTForCausalLM

        return APTForCausalLM
    if name == "APTLMConfig":
        from .configuration_apt import APTLMConfig

        return APTLMConfig
    raise AttributeError(name)

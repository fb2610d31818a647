"""The APT model's configuration as a ``transformers`` configuration: ``APTLMConfig``, model type ``"apt"``.

Its fields are ``APTConfig``'s, read from that dataclass rather than listed again, under their own names (the
names ``transformers`` looks for, ``hidden_size``, ``num_hidden_layers`` and the others, map onto them). This
module is copied, with the modules it imports, into every exported model folder (``hub.py``), where
``transformers`` loads it as remote code: it imports nothing but ``transformers`` and this package's own
modules, by relative imports.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from transformers import PretrainedConfig

from .config import MODEL_TYPE, APTConfig

APT_FIELDS = {f.name: f.default for f in fields(APTConfig) if f.default is not MISSING}


class APTLMConfig(PretrainedConfig):
    """``APTConfig``'s fields as a ``PretrainedConfig``; ``to_apt()`` gives the ``APTConfig`` back (checked)."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                     "intermediate_size": "d_ff", "max_position_embeddings": "max_seq_len"}

    def __init__(self, **kwargs: Any) -> None:
        for name, default in APT_FIELDS.items():
            setattr(self, name, kwargs.pop(name, default))
        kwargs["tie_word_embeddings"] = self.tie_embeddings  # transformers' name for it, read when weights are tied
        # a field of transformers' own configurations, which the base class would take for a generation parameter
        self.use_cache = kwargs.pop("use_cache", True)
        kwargs.setdefault("initializer_range", 0.02)  # the APT model's own initialisation
        super().__init__(**kwargs)
        self.to_apt()  # refuses what the APT model refuses (a d_model not divisible by num_heads, ...)

    def to_apt(self) -> APTConfig:
        return APTConfig(**{name: getattr(self, name) for name in APT_FIELDS})

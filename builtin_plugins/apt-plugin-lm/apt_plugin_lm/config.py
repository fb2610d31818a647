"""The APT model's configuration: its shape, its attention mode and its refinement, saved as config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CONFIG_FILE = "config.json"
MODEL_TYPE = "apt"  # transformers' name for the architecture (config.json's model_type in a Hub folder)


@dataclass
class APTConfig:
    vocab_size: int = 256
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    num_encoder_layers: int = 0  # > 0 adds an encoder and cross-attention (seq2seq with src_tokens)
    d_ff: int = 512
    max_seq_len: int = 256
    dropout: float = 0.0
    attention: str = "autopoietic"  # or "sdpa"
    refine_hidden: int = 4  # h of the elementwise 1->h->1 MLP
    init_tau: float = 1.0
    tau_min: float = 1.0
    tau_max: float = 2.0
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.attention not in ("autopoietic", "sdpa"):
            raise ValueError(f"attention must be 'autopoietic' or 'sdpa', not {self.attention!r}")
        if not 0 < self.tau_min <= self.tau_max:
            raise ValueError(f"tau_min {self.tau_min} and tau_max {self.tau_max}: need 0 < tau_min <= tau_max")
        if not self.tau_min <= self.init_tau <= self.tau_max:
            raise ValueError(f"init_tau {self.init_tau} outside [{self.tau_min}, {self.tau_max}]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> APTConfig:
        """The configuration in ``data``: ``to_dict()``'s keys, or a Hub folder's ``config.json`` (model type
        ``"apt"``), whose other keys are ``transformers``' own (``auto_map``, ``dtype``, ...) and are left out."""
        known = {f.name for f in fields(cls)}
        if data.get("model_type") == MODEL_TYPE:
            data = {key: value for key, value in data.items() if key in known}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown APTConfig keys: {sorted(unknown)}")
        return cls(**data)

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> APTConfig:
        return cls.from_dict(json.loads((Path(directory) / CONFIG_FILE).read_text()))

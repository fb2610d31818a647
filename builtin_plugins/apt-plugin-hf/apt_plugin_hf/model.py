"""``hf-causal-lm``: a transformers causal LM, or a PEFT LoRA model around one, as a Model of the contract.

The trainer calls ``model(input_ids, attention_mask)`` and hands the logits ``[B, T, V]`` to the loss (the text
data's labels are already shifted, so the LM loss reads them as it reads the APT model's). Beside that, only
the contract's optional members: ``flops_per_token`` (MFU), ``generate`` (the ``text-samples`` callback),
``save_pretrained`` (model/: the transformers folder, or PEFT's adapter folder), and ``config`` /
``from_config`` (a model of the same shape rebuilt, as the export of an FSDP run does).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apt_sdk.pretrained import quiet_transformers

from .lora import apply_lora

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class HFConfig:
    """What rebuilds the model (``to_dict`` is what checkpoints store)."""

    model: dict
    """The transformers config's ``to_dict()`` (its ``model_type`` included), after any resize of the embeddings."""
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    lora: dict | None = None
    """r, alpha, dropout, target_modules, modules_to_save; None: the whole model trains."""
    base: str | None = None
    """Where the base weights came from (a folder or a hub id): the adapter's ``base_model_name_or_path``."""
    merge_lora: bool = False
    tokenizer: Any = field(default=None, repr=False, compare=False)
    """The data's tokenizer, saved beside the exported model (not part of ``to_dict``: it is no config)."""

    def to_dict(self) -> dict:
        # not dataclasses.asdict: it would deep-copy the tokenizer at every checkpoint
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "tokenizer"}

    @classmethod
    def from_dict(cls, values: dict) -> HFConfig:
        return cls(**{k: v for k, v in values.items() if k != "tokenizer"})


def transformers_config(values: dict) -> Any:
    """A transformers config object from its ``to_dict()``."""
    from transformers import CONFIG_MAPPING

    values = dict(values)
    return CONFIG_MAPPING[values["model_type"]].from_dict(values)


class HFCausalLM(nn.Module):
    """A transformers causal LM (``self.model``: a ``PreTrainedModel``, or a ``PeftModel`` around one)."""

    def __init__(self, network: nn.Module, config: HFConfig) -> None:
        super().__init__()
        self.model = network
        self.config = config

    @classmethod
    def assemble(cls, network: nn.Module, config: HFConfig) -> HFCausalLM:
        """``network`` (a transformers model, its weights loaded) with the config's gradient checkpointing and
        LoRA adapter."""
        if config.gradient_checkpointing:
            # not reentrant: the adapter's gradients flow without the inputs requiring one, and under DDP
            network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora is not None:
            network = apply_lora(network, config.lora, config.base)
        return cls(network, config)

    @classmethod
    def from_config(cls, config: HFConfig | dict) -> HFCausalLM:
        """A model of the same shape with fresh weights (the Model protocol's rebuild): no folder and no
        network are needed, the architecture is in ``config.model``."""
        from transformers import AutoModelForCausalLM

        config = config if isinstance(config, HFConfig) else HFConfig.from_dict(config)
        with quiet_transformers():
            network = AutoModelForCausalLM.from_config(transformers_config(config.model),
                                                       dtype=DTYPES[config.dtype])
        return cls.assemble(network, config)

    @property
    def base_model(self) -> nn.Module:
        """The transformers model (inside the adapter with LoRA)."""
        return self.model.get_base_model() if self.config.lora is not None else self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **inputs: Any) -> torch.Tensor:
        """Logits ``[B, T, V]``; no key-value cache is kept while training."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs).logits

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 2 per weight forward, 2 backward to the activations, and 2 more for each
        weight that trains (all of them, or the adapter's); plus the attention's 12·L·d·T. Embedding lookups are
        no matrix products; an output head tied to them is."""
        embeddings = {id(p) for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        output = self.base_model.get_output_embeddings()
        head = {id(output.weight)} if output is not None else set()
        weights = trainable = 0
        for param in {id(p): p for p in self.parameters()}.values():
            if id(param) in embeddings and id(param) not in head:
                continue
            weights += param.numel()
            trainable += param.numel() if param.requires_grad else 0
        shape = self.base_model.config  # an architecture that names its depth or width otherwise: weights only
        attention = 12 * getattr(shape, "num_hidden_layers", 0) * getattr(shape, "hidden_size", 0) * seq_len
        return 4.0 * weights + 2.0 * trainable + attention

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_length: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 do_sample: bool = True, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Extend ``input_ids`` [B, T] to at most ``max_length`` tokens with transformers' ``generate``, in eval
        mode (the mode is restored). ``generator`` seeds the sampling, in a forked random state: the training run's
        random streams are left as they were, so sampling does not change what a resumed run does."""
        sampling = {"temperature": temperature, "top_k": top_k or None, "top_p": top_p} if do_sample and temperature \
            else {}
        config = self.base_model.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        devices = [input_ids.device] if input_ids.device.type == "cuda" else []
        training, sharded = self.training, _sharded(self)
        self.eval()
        if sharded:
            # transformers calls the inner model, not this one: a forward through this one first (FSDP sets itself
            # up at its root's first forward), then this module's own weights gathered for the whole generation
            # (each block's forward gathers its own). Every rank generates the same tokens: the gathers match
            self(input_ids[:, :1])
            self.unshard()
        try:
            with torch.random.fork_rng(devices=devices):
                if generator is not None:
                    torch.manual_seed(generator.initial_seed())
                return self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_length=max_length,
                    do_sample=bool(sampling), repetition_penalty=repetition_penalty, use_cache=use_cache,
                    eos_token_id=eos_token_id, pad_token_id=pad, **sampling)
        finally:
            if sharded:
                self.reshard()
            self.train(training)

    def save_pretrained(self, directory: str | Path) -> None:
        """model/: with LoRA, PEFT's adapter folder (``PeftModel.from_pretrained(base, directory)`` loads it on its
        base; its ``adapter_config.json`` names the base), or with ``merge_lora`` the merged whole model; without
        LoRA, the transformers folder. The tokenizer goes beside it, so the folder is complete."""
        network = self.model
        if self.config.lora is not None and self.config.merge_lora:
            network = copy.deepcopy(network).merge_and_unload()  # the model in memory keeps its adapter
        with quiet_transformers():
            network.save_pretrained(str(directory))
        tokenizer = self.config.tokenizer
        if tokenizer is not None and hasattr(tokenizer, "save"):
            tokenizer.save(directory)


def _sharded(model: nn.Module) -> bool:
    """Whether FSDP sharded ``model`` (it is then an instance of a subclass FSDP made)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(model, FSDPModule)

"""Registers ``hf-causal-lm``: any transformers causal LM as a model component, LoRA through PEFT."""

from __future__ import annotations

import random

from apt_sdk import BuildContext, hookimpl


def build_model(options: dict, context: BuildContext):
    from .building import build_model as build

    return build(options, context)


@hookimpl
def register_models(register):
    register("hf-causal-lm", build_model, summary="Any transformers causal LM, optionally with LoRA (PEFT)")


@hookimpl
def seed_everything(seed: int):
    # a model built from a config, and a LoRA adapter, start from torch's random state
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""Registers the APT language model, text data, LM loss and the text-samples callback."""

from __future__ import annotations

import random

from apt_sdk import BuildContext, OptionError, UserError, hookimpl


def build_data(options: dict, context: BuildContext):
    from .data import build_text_data

    return build_text_data(options, context.seed)


def build_model(options: dict, context: BuildContext):
    from .model import APTConfig, APTLargeModel

    data = context.data
    block_size = getattr(data, "block_size", None)
    if options.get("pretrained"):
        model = APTLargeModel.from_pretrained(options["pretrained"])
        _check_length(model.config.max_seq_len, block_size, "pretrained")
        return model
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is None:
        raise UserError("[model] apt-lm needs a data component with a tokenizer (e.g. use = \"text\")")
    if options["d_model"] % options["num_heads"]:
        raise OptionError("num_heads", f"d_model = {options['d_model']} is not divisible by num_heads = "
                                       f"{options['num_heads']}")
    _check_length(options["max_seq_len"], block_size, "max_seq_len")
    arch = {k: v for k, v in options.items() if k not in ("pretrained", "max_seq_len")}
    try:
        config = APTConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                           bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                           max_seq_len=options["max_seq_len"] or block_size, **arch)
    except ValueError as exc:
        raise OptionError(None, str(exc)) from None
    return APTLargeModel(config)


def _check_length(max_seq_len: int, block_size: int | None, key: str) -> None:
    """Before anything trains: a model shorter than the data's sequences would fail at the first batch."""
    if max_seq_len and block_size and max_seq_len < block_size:
        what = f"the pretrained model's max_seq_len ({max_seq_len})" if key == "pretrained" else f"{max_seq_len}"
        raise OptionError(key, f"{what} is smaller than the data's block_size ({block_size}); raise it, or lower "
                               f"[data] block_size")


def build_loss(options: dict, context: BuildContext):
    from .loss import LMCrossEntropy

    return LMCrossEntropy(**options)


def build_samples(options: dict, context: BuildContext):
    from .samples import TextSamples

    return TextSamples(seed=context.seed, run_dir=context.run_dir, **options)


@hookimpl
def register_data(register):
    register("text", build_data, summary="Text from a file, folder, list of strings or the stdlib corpus")


@hookimpl
def register_models(register):
    register("apt-lm", build_model, summary="APT language model with autopoietic attention")


@hookimpl
def register_losses(register):
    register("lm-cross-entropy", build_loss, summary="Token-level cross-entropy (sum, count)")


@hookimpl
def register_callbacks(register):
    register("text-samples", build_samples, summary="Generate a sample before and after training")


@hookimpl
def seed_everything(seed: int):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

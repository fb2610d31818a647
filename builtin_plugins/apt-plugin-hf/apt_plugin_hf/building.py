"""The ``hf-causal-lm`` factory: the options checked, the base model loaded (or made), fitted to the data's
tokenizer and sequences, and wrapped with its adapter; each problem an ``OptionError`` naming its key, before
anything trains or is written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from apt_sdk import BuildContext, OptionError, UserError

from .loading import check_dtype, check_length, fit_vocabulary, load_network, new_network
from .lora import check_modules, lora_settings
from .model import HFCausalLM, HFConfig


@contextlib.contextmanager
def option(key: str) -> Iterator[None]:
    """A ``UserError`` raised inside is reported as the option ``key``'s (with the pipeline's file and line)."""
    try:
        yield
    except OptionError:
        raise
    except UserError as exc:
        raise OptionError(key, str(exc)) from None


def build_model(options: dict, context: BuildContext) -> HFCausalLM:
    source, fields, table = options.get("name_or_path"), options.get("config"), options.get("lora")
    if (source is None) == (fields is None):
        raise OptionError("name_or_path", "give name_or_path (a pretrained model's folder, or a hub id) or config "
                                          "(a new model: config = { model_type = \"llama\", ... })"
                          + (", not both" if source is not None else ""))
    with option("lora"):
        lora = lora_settings(table) if table is not None else None
    if lora is not None and fields is not None:
        raise OptionError("lora", "a LoRA adapter trains on pretrained weights that stay frozen, and a model built "
                                  "from config has none: give name_or_path, or leave lora out to train the whole model")
    if options["merge_lora"] and lora is None:
        raise OptionError("merge_lora", "there is no adapter to merge without lora = { ... }")
    with option("dtype"):
        check_dtype(options["dtype"], lora is not None)
    tokenizer = getattr(context.data, "tokenizer", None)
    if source is not None:
        with option("name_or_path"):
            network, base = load_network(source, options["dtype"])
    else:
        with option("config"):
            network, base = new_network(fields, tokenizer, options["dtype"]), None
    with option("resize_embeddings" if options["resize_embeddings"] else "config" if fields else "name_or_path"):
        fit_vocabulary(network, tokenizer, options["resize_embeddings"])
    with option("name_or_path" if source is not None else "config"):
        check_length(network, getattr(context.data, "block_size", None))
    if lora is not None:
        with option("lora"):
            check_modules(network, lora)
    config = HFConfig(model=network.config.to_dict(), dtype=options["dtype"],
                      gradient_checkpointing=options["gradient_checkpointing"], lora=lora, base=base,
                      merge_lora=options["merge_lora"], tokenizer=tokenizer)
    with option("lora"):
        return HFCausalLM.assemble(network, config)

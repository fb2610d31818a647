"""The base model: from a folder ``save_pretrained`` wrote, a hub id (the Hugging Face cache first; offline, or a
hub that does not answer, is an error at once, never a wait), or a transformers config from scratch; and the dtype
checked on the device that will train it. Every failure is a ``UserError`` that says what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from apt_sdk import UserError
from apt_sdk.pretrained import from_hub, quiet_transformers

from .model import DTYPES

SPECIAL_IDS = {"pad_token_id": "pad_id", "bos_token_id": "bos_id", "eos_token_id": "eos_id"}


def load_network(name_or_path: str, dtype: str) -> tuple[Any, str]:
    """The pretrained model and where it came from (a folder's absolute path, or the hub id)."""
    from transformers import AutoModelForCausalLM

    def read(source: str, local_files_only: bool) -> Any:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], local_files_only=local_files_only)

    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"folder {str(local)!r} holds no config.json: give the folder save_pretrained wrote "
                            "(config.json and the weights)")
        try:
            return read(str(local.resolve()), True), str(local.resolve())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load a causal LM from folder {str(local)!r}: {_first_line(exc)}") from None
    if local.exists():
        raise UserError(f"{name_or_path!r} is a file: give the folder save_pretrained wrote (config.json and weights)")
    if not _hub_id(name_or_path):
        raise UserError(f"there is no folder {str(local.resolve())!r} (and {name_or_path!r} is no hub id)")
    folder = f"models/{name_or_path.rstrip('/').rsplit('/', 1)[-1]}"
    advice = (f"Download it first, where there is a network (hf download {name_or_path} --local-dir {folder}), and "
              f"set name_or_path = \"{folder}\"")
    try:
        return from_hub(name_or_path, lambda local_only: read(name_or_path, local_only), advice), name_or_path
    except ValueError as exc:  # in the cache, but no causal LM (an encoder-only model, say)
        raise UserError(f"cannot load a causal LM from {name_or_path!r}: {_first_line(exc)}") from None


def new_network(fields: dict, tokenizer: Any, dtype: str) -> Any:
    """A model with fresh weights from ``fields`` (``model_type`` and the config's fields). The vocabulary and the
    special ids are the tokenizer's unless given."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    model_type = fields.get("model_type")
    if model_type not in CONFIG_MAPPING:
        hint = "" if model_type else " (config = { model_type = \"llama\", hidden_size = 64, ... })"
        raise UserError(f"model_type {model_type!r} is not a transformers architecture{hint}; e.g. "
                        "\"llama\", \"gpt2\", \"qwen2\", \"mistral\"")
    values = dict(fields)
    if tokenizer is not None:
        values.setdefault("vocab_size", tokenizer.vocab_size)
        for key, attribute in SPECIAL_IDS.items():
            if getattr(tokenizer, attribute, None) is not None:
                values.setdefault(key, getattr(tokenizer, attribute))
    config_class = CONFIG_MAPPING[model_type]
    known = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
    unknown = sorted(set(values) - known)
    if unknown:  # transformers would keep a misspelt field as an unused attribute and build the default
        from apt_sdk import check_known_keys

        check_known_keys(unknown, known, f"{config_class.__name__} field")
    try:
        config = config_class(**values)
        with quiet_transformers():
            return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot build a {model_type} causal LM from {values}: {_first_line(exc)}") from None


def check_dtype(dtype: str, lora: bool) -> None:
    """``dtype`` can train here: float16 weights only frozen under an adapter (float16 gradients underflow without
    loss scaling, and the fp16 GradScaler refuses to unscale them), and a dtype this device computes in."""
    if dtype == "float16" and not lora:
        raise UserError("dtype = \"float16\" trains the weights in half precision, whose gradients underflow "
                        "without loss scaling (and the fp16 GradScaler refuses float16 gradients): use "
                        "\"bfloat16\", or \"float32\" with [trainer] precision = \"fp16\", or lora (the adapter trains "
                        "in float32 on float16 weights)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the trainer's device = "auto"
    if device.type == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"dtype = \"bfloat16\": {torch.cuda.get_device_name(device)} does not compute in bfloat16; "
                        "use \"float16\" with lora, or \"float32\"")
    try:
        probe = torch.ones(4, 4, dtype=DTYPES[dtype], device=device, requires_grad=True)
        (probe @ probe).sum().backward()
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"dtype = {dtype!r}: this machine's {device.type} cannot train in it ({_first_line(exc)}); "
                        "use \"float32\"") from None


def embedding_rows(network: Any) -> int:
    return network.get_input_embeddings().num_embeddings


def fit_vocabulary(network: Any, tokenizer: Any, resize: bool) -> None:
    """The tokenizer's ids index the embeddings: a larger vocabulary than the model's rows is an error (or, with
    ``resize``, the rows grow; new ones start at the mean of the others). A smaller one is how many models ship
    (rows padded to a round number): kept, unless ``resize`` makes them equal."""
    if tokenizer is None:
        return
    rows, tokens = embedding_rows(network), tokenizer.vocab_size
    if rows == tokens or (tokens < rows and not resize):
        return
    if not resize:
        raise UserError(f"the tokenizer has {tokens} tokens but the model's embeddings have {rows} rows: ids from "
                        f"{rows} on would index past them. Use the model's own tokenizer ([data] tokenizer = the "
                        f"model's folder), or set resize_embeddings = true to grow the embeddings to {tokens}")
    with quiet_transformers():
        network.resize_token_embeddings(tokens)


def check_length(network: Any, block_size: int | None) -> None:
    """The data's sequences fit the model's positions (before the first batch, not at it)."""
    limit = getattr(network.config, "max_position_embeddings", None)
    if block_size and limit and block_size > limit:
        raise UserError(f"the data's block_size ({block_size}) is longer than the model's max_position_embeddings "
                        f"({limit}): lower [data] block_size")


def _hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""The Hugging Face form of this project's character and BPE tokenizers: a ``tokenizers`` ``tokenizer.json`` and
the ``tokenizer_config.json`` (with ``special_tokens_map.json`` for older ``transformers``) that make
``AutoTokenizer.from_pretrained(folder)`` a ``PreTrainedTokenizerFast`` giving the project's ids.

A character tokenizer is a BPE model without merges over single characters (each character its own piece,
newlines included; unknown ones ``<unk>``), decoded by joining the pieces: BPE rather than a word-level model,
because ``transformers`` "cleans up" the spaces before punctuation in the text a word-level tokenizer decodes
(the text-generation pipeline asks for it), and leaves a BPE tokenizer's text as it is.

Both add ``<bos>`` in front of a text, as this project prompts its models (``text-samples``, ``apt-kernel
serve``): ``tokenizer("To be")`` is what the model saw in training. The character tokenizer splits ``"<eos>"``
written in a text into characters, as it always did (``split_special_tokens``); BPE reads it as the token, as
the ``tokenizers`` library always did.

The configuration is written as JSON rather than by ``transformers``' ``save_pretrained``: importing
``transformers`` takes seconds, and the trainer saves the tokenizer with a run's first checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOKENIZER_FILE, HUB_CONFIG, SPECIAL_TOKENS_MAP = "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
KIND_KEY = "apt_tokenizer"  # which of this project's tokenizers wrote the folder: "char" or "bpe"


def char_backend(itos: Sequence[str], unk: str) -> Any:
    """A ``tokenizers.Tokenizer`` with the ids of a character tokenizer whose tokens are ``itos``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(itos)}, [], unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def write_hub_tokenizer(directory: str | Path, backend: Any, kind: str, specials: Sequence[str]) -> None:
    """``tokenizer.json`` (``backend`` with ``<bos>`` added in front of a text), ``tokenizer_config.json`` and
    ``special_tokens_map.json`` in ``directory`` (created). ``specials``: pad, bos, eos and unk."""
    from tokenizers import Tokenizer, processors

    pad, bos, eos, unk = specials
    tokenizer = Tokenizer.from_str(backend.to_str())  # a copy: the tokenizer in use encodes without <bos>
    tokenizer.add_special_tokens(list(specials))  # already there by their ids: this marks them special
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, bos_id)])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    tokens = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}
    # padded on the left: batches of prompts of a decoder-only model are, for generate to continue each row
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "clean_up_tokenization_spaces": False,
              "padding_side": "left", KIND_KEY: kind}
    if kind == "char":
        config["split_special_tokens"] = True
    (directory / HUB_CONFIG).write_text(json.dumps(config, indent=2))
    (directory / SPECIAL_TOKENS_MAP).write_text(json.dumps(tokens, indent=2))


def read_kind(directory: str | Path) -> str | None:
    """``"char"`` or ``"bpe"`` for a folder this project's tokenizers saved, else None (another tokenizer)."""
    try:
        config = json.loads((Path(directory) / HUB_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get(KIND_KEY) if isinstance(config, dict) else None

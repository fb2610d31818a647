"""The run's tokenizer: trained on the training records (``"char"``, ``"bpe"``) or loaded from a folder, and on
resume the one the run saved beside its checkpoints.

A resumed run retrained ``"char"``/``"bpe"`` on the manifest as it was now: after an edit of the manifest the
ids moved (a BPE of the same size, other merges) and the model read scrambled tokens without a word, or its
embedding no longer fitted the checkpoint ("tok.weight (11, 16) vs (12, 16)"); and the retrained tokenizer
was written over the run's, so no older checkpoint matched it any more. Now a resumed run reads the saved
one, and text it was never trained on, characters it has not seen, is refused by the manifest's line.

A character tokenizer's vocabulary is its alphabet. A byte-level BPE spells any text, so the characters it
was trained on are saved beside it (``alphabet.json``) to tell new ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apt_plugin_lm.tokenization import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer
from apt_sdk import OptionError

ALPHABET = "alphabet.json"
TRAINED = ("char", "bpe")


class AlphabetBPE(BPETokenizer):
    """A BPE tokenizer that saves the characters of the text it was trained on beside itself."""

    def __init__(self, tokenizer: Any, alphabet: set[str] | None) -> None:
        super().__init__(tokenizer)
        self.alphabet = alphabet

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        if self.alphabet is not None:
            (Path(directory) / ALPHABET).write_text(json.dumps(sorted(self.alphabet)), encoding="utf-8")


def run_tokenizer(spec: str, records: list, key: str, context: Any = None) -> Any:
    """The tokenizer for ``records`` (the training records; ``key`` is their option, for messages)."""
    texts = [r.prompt + r.text for r in records]
    saved = saved_folder(context) if spec in TRAINED else None
    if saved is None:
        try:
            tokenizer = build_tokenizer(spec, texts)
        except (OSError, ValueError) as exc:
            raise OptionError("tokenizer", f"cannot load {spec!r}: {exc}") from None
        return AlphabetBPE(tokenizer.tokenizer, set("".join(texts))) if spec == "bpe" else tokenizer
    try:
        tokenizer = load_tokenizer(saved)
    except (OSError, ValueError) as exc:
        raise OptionError("tokenizer", f"the run being resumed saved its tokenizer in {saved}, which cannot be read "
                                       f"({exc})") from None
    if tokenizer.kind != spec:
        raise OptionError("tokenizer", f"is {spec!r}, but the run being resumed was trained with a {tokenizer.kind} "
                                       f"tokenizer (saved in {saved}): set tokenizer = {tokenizer.kind!r}, or train a "
                                       "new run")
    if isinstance(tokenizer, CharTokenizer):
        alphabet: set[str] | None = set(tokenizer.itos)
    else:
        file = saved / ALPHABET
        alphabet = set(json.loads(file.read_text(encoding="utf-8"))) if file.is_file() else None
        tokenizer = AlphabetBPE(tokenizer.tokenizer, alphabet)
    if alphabet is not None:
        _check_alphabet(records, alphabet, key, saved)
    return tokenizer


def saved_folder(context: Any) -> Path | None:
    """The tokenizer folder of the run being resumed, or None when this run does not resume (or saved none)."""
    if context is None:
        return None
    trainer = (getattr(context, "config", None) or {}).get("trainer") or {}
    resume = context.resume or trainer.get("resume_from")
    if not resume:
        return None
    # the trainer saves it beside its checkpoints: <checkpoint_dir>/tokenizer, checkpoints in <dir>/checkpoints or
    # <dir>/temp, so a checkpoint file given by its path has it two folders up
    checkpoint = Path(str(resume)).expanduser()
    folders = [checkpoint.parent.parent] if checkpoint.is_file() else []
    folders.append(Path(trainer.get("checkpoint_dir") or context.run_dir))
    return next((f / "tokenizer" for f in folders if (f / "tokenizer").is_dir()), None)


def _check_alphabet(records: list, alphabet: set[str], key: str, saved: Path) -> None:
    unseen: dict[str, None] = {}
    first = None
    for record in records:
        for char in record.prompt + record.text:
            if char not in alphabet and char not in unseen:
                unseen[char] = None
                first = first or record.where
    if unseen:
        shown = ", ".join(repr(c) for c in list(unseen)[:10]) + (f" and {len(unseen) - 10} more"
                                                                  if len(unseen) > 10 else "")
        raise OptionError(key, f"{first} (and perhaps others) has characters the tokenizer of the run being resumed "
                               f"({saved}) was not trained on: {shown}. A resumed run keeps its tokenizer, so the "
                               "model's vocabulary stays that of its checkpoints: resume with the manifest it was "
                               "trained on, or train a new run on this one")

"""Tokenizers: character-level (from the corpus), byte-level BPE (trained with the ``tokenizers``
library) and a local pretrained tokenizer through ``transformers``. All save to and load from a
``tokenizer/`` folder beside the model, and expose explicit pad/bos/eos ids.

The character and BPE tokenizers also save as a Hugging Face tokenizer (``save_pretrained``, which ``save``
includes): a ``tokenizers`` ``tokenizer.json`` and its ``tokenizer_config.json``, which
``AutoTokenizer.from_pretrained`` loads as a ``PreTrainedTokenizerFast`` giving the same ids (``hub_tokenizer``).
Folders saved before hold ``char_vocab.json`` or a bare ``tokenizer.json``, and still load."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .hub_tokenizer import HUB_CONFIG, char_backend, read_kind, write_hub_tokenizer

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHAR_FILE, BPE_FILE = "char_vocab.json", "tokenizer.json"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.itos = list(SPECIALS) + sorted(set(chars) - set(SPECIALS))
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(ch, self.unk_id) for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids if i >= len(SPECIALS))

    def save(self, directory: str | Path) -> None:
        """``char_vocab.json``, which ``load`` reads, and the Hugging Face tokenizer's files."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / CHAR_FILE).write_text(json.dumps({"type": "char", "itos": self.itos}))
        self.save_pretrained(directory)

    def save_pretrained(self, directory: str | Path) -> None:
        """The Hugging Face tokenizer alone: ``tokenizer.json`` (a word-level model over single characters) and
        ``tokenizer_config.json``."""
        write_hub_tokenizer(directory, char_backend(self.itos, SPECIALS[3]), self.kind, SPECIALS)

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        data = json.loads((Path(directory) / CHAR_FILE).read_text())
        return cls(data["itos"][len(SPECIALS):])

    @classmethod
    def from_hub(cls, directory: str | Path) -> CharTokenizer:
        """The tokenizer ``save_pretrained`` wrote in ``directory``: its vocabulary, read from ``tokenizer.json``."""
        vocab = json.loads((Path(directory) / BPE_FILE).read_text(encoding="utf-8"))["model"]["vocab"]
        itos = sorted(vocab, key=vocab.__getitem__)
        return cls(itos[len(SPECIALS):])


class BPETokenizer:
    """Byte-level BPE: any text encodes without unknown tokens."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (tokenizer.token_to_id(t) for t in SPECIALS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # the saved tokenizer.json adds <bos> for Hugging Face users (as the prompts of this project have it)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        """``tokenizer.json``, which ``load`` reads, and its ``tokenizer_config.json``: a Hugging Face tokenizer."""
        self.save_pretrained(directory)

    def save_pretrained(self, directory: str | Path) -> None:
        write_hub_tokenizer(directory, self.tokenizer, self.kind, SPECIALS)

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(directory) / BPE_FILE)))


class PretrainedTokenizer:
    """A tokenizer saved with ``save_pretrained`` in a local folder, loaded by ``transformers``."""

    kind = "pretrained"

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        self.unk_id = hf_tokenizer.unk_token_id
        self.eos_id = hf_tokenizer.eos_token_id if hf_tokenizer.eos_token_id is not None else self.unk_id
        self.bos_id = hf_tokenizer.bos_token_id if hf_tokenizer.bos_token_id is not None else self.eos_id
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else self.eos_id
        if self.eos_id is None:
            raise ValueError("the pretrained tokenizer defines no eos, pad or unk token")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PretrainedTokenizer:
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"pretrained tokenizer folder not found: {path}")
        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))

    def save_pretrained(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))


Tokenizer = CharTokenizer | BPETokenizer | PretrainedTokenizer


def build_tokenizer(spec: str, texts: list[str], bpe_vocab_size: int = 512) -> Tokenizer:
    """``"char"`` or ``"bpe"`` trains on ``texts``; anything else is a local tokenizer folder."""
    if spec == "char":
        return CharTokenizer.train(texts)
    if spec == "bpe":
        return BPETokenizer.train(texts, bpe_vocab_size)
    return load_tokenizer(spec)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in ``directory``: this project's character or BPE tokenizer (as saved now, or before
    it saved Hugging Face files), else any tokenizer ``transformers`` loads from a local folder."""
    directory = Path(directory)
    if (directory / CHAR_FILE).exists():
        return CharTokenizer.load(directory)
    if (directory / BPE_FILE).exists():
        kind = read_kind(directory) if (directory / HUB_CONFIG).exists() else BPETokenizer.kind
        if kind == BPETokenizer.kind:
            return BPETokenizer.load(directory)
        if kind == CharTokenizer.kind:
            return CharTokenizer.from_hub(directory)
    return PretrainedTokenizer.from_pretrained(directory)

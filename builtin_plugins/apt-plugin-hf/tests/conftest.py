"""Tiny transformers models in folders, as a user brings them: a Llama-architecture and a GPT-2-architecture causal
LM built from configs, each with a byte-level BPE tokenizer (the ``tokenizers`` library) trained on Tiny
Shakespeare and saved beside it as a ``PreTrainedTokenizerFast``, and pretrained for a few seconds on that text,
so fine-tuning starts from weights that know something. Built once per session (``hf_models``); every test here
gets its own plugin-status memory (the SDK's ``apt_isolated_env``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401

SHAKESPEARE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare absent ({SHAKESPEARE})")
CHARS = 60_000  # of the text: the tokenizer, the pretraining, and the pipelines' data (max_chars)
SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
SHAPES = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 2, "n_positions": 64},
}


def shakespeare_tokenizer(text: str, vocab_size: int = 320):
    """A byte-level BPE trained on ``text``, as the transformers tokenizer a Hub model folder holds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIALS)


def pretrain(model: torch.nn.Module, ids: torch.Tensor, steps: int = 80, block: int = 32, batch: int = 16) -> None:
    """A few steps of plain next-token training, so the saved model is a pretrained one, not noise."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - block - 1, (batch,), generator=generator)
        rows = torch.stack([ids[s: s + block + 1] for s in starts.tolist()])
        loss = model(input_ids=rows, labels=rows, use_cache=False).loss  # transformers shifts the labels
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def make_model(folder: Path, shape: dict, tokenizer, ids: torch.Tensor) -> Path:
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    fields = dict(shape)
    config = CONFIG_MAPPING[fields.pop("model_type")](
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    pretrain(model, ids)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    """``{"llama": folder, "gpt2": folder}``: pretrained tiny models with their tokenizer, made once."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare absent ({SHAKESPEARE})")
    root = tmp_path_factory.mktemp("hf-models")
    text = SHAKESPEARE.read_text(encoding="utf-8")[:CHARS]
    tokenizer = shakespeare_tokenizer(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return {name: make_model(root / name, shape, tokenizer, ids) for name, shape in SHAPES.items()}


def pipeline(model_folder: Path, model_lines: str = "", trainer_lines: str = "", callbacks: str = "",
             tokenizer: Path | str | None = None, learning_rate: float = 3e-3) -> str:
    """A pipeline that trains ``model_folder`` with ``hf-causal-lm`` on Tiny Shakespeare (its own tokenizer)."""
    return f"""
[pipeline]
name = "hf"
seed = 4

[data]
use = "text"
path = {str(SHAKESPEARE)!r}
max_chars = {CHARS}
tokenizer = {str(tokenizer or model_folder)!r}
block_size = 32
batch_size = 8

[model]
use = "hf-causal-lm"
name_or_path = {str(model_folder)!r}
{model_lines}

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = 30
learning_rate = {learning_rate}
warmup_steps = 0
eval_batches = 4
log_every = 0
{trainer_lines}
{callbacks}
"""

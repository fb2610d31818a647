"""Tokenizers (char, BPE, local pretrained via transformers) and the text data component."""

from pathlib import Path

import pytest
import torch

from apt_plugin_lm.corpus import stdlib_docstrings
from apt_plugin_lm.data import IGNORE_INDEX, TextDataModule, build_text_data, read_texts
from apt_plugin_lm.tokenization import BPETokenizer, CharTokenizer, PretrainedTokenizer, load_tokenizer
from apt_sdk import UserError

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"  # beside the repository

TEXTS = stdlib_docstrings(60_000)


def options(**kw):
    base = {"path": None, "texts": None, "corpus": None, "max_chars": 0, "tokenizer": "char",
            "bpe_vocab_size": 300, "block_size": 16, "batch_size": 4, "val_fraction": 0.1, "packing": None}
    return base | kw


def test_stdlib_corpus_is_real_prose_and_deterministic():
    assert len("\n\n".join(TEXTS)) >= 59_000
    assert TEXTS == stdlib_docstrings(60_000)
    assert any("Return" in t for t in TEXTS)


def test_char_tokenizer_round_trip(tmp_path):
    tok = CharTokenizer.train(TEXTS)
    text = TEXTS[3][:200]
    assert tok.decode(tok.encode(text)) == text
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.encode("\u2603") == [tok.unk_id]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode(text) == tok.encode(text)


def test_bpe_tokenizer_trains_saves_and_loads(tmp_path):
    tok = BPETokenizer.train(TEXTS, vocab_size=400)
    assert tok.vocab_size == 400
    text = "Return the number of items in the container. Ünïcode ☃"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text.encode())  # merges happened, bytes cover all
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer) and again.encode(text) == ids and again.eos_id == tok.eos_id


def test_local_pretrained_tokenizer_through_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    bpe = BPETokenizer.train(TEXTS, vocab_size=300)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe.tokenizer, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>", unk_token="<unk>")
    hf.save_pretrained(tmp_path / "hf")
    tok = load_tokenizer(tmp_path / "hf")
    assert isinstance(tok, PretrainedTokenizer)
    assert tok.encode("Return the value") == bpe.encode("Return the value")
    assert tok.pad_id == bpe.pad_id and tok.eos_id == bpe.eos_id
    with pytest.raises(FileNotFoundError):
        PretrainedTokenizer.from_pretrained(tmp_path / "missing")


def test_packing_split_and_epoch_coverage():
    data = build_text_data(options(texts=None, corpus="python-stdlib-docs", max_chars=20_000), seed=1)
    total = len(data.train_ids) + len(data.val_ids)
    assert abs(len(data.val_ids) - total * 0.1) <= 1  # the last 10% is validation
    batches = list(data.train_batches(0))
    assert len(batches) == data.steps_per_epoch(0)
    x, y = batches[0]["input_ids"], batches[0]["labels"]
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])  # labels are the next tokens
    # every training token after the epoch's offset is a target exactly once
    targets = torch.cat([b["labels"].flatten() for b in batches])
    blocks = data._train_samples(0)
    assert len(targets) == len(blocks) * 16 and len(targets) > len(data.train_ids) - 2 * 16
    assert torch.equal(targets.sort().values, blocks[:, 1:].flatten().sort().values)
    again = list(data.train_batches(0))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    other = next(iter(data.train_batches(1)))["input_ids"]
    assert not torch.equal(other, batches[0]["input_ids"])  # a new order and offset each epoch
    assert 2.0 < data.unigram_entropy < 4.5


def test_list_of_strings_is_padded_and_padding_ignored():
    texts = ["short one", "a somewhat longer sentence here", "mid length", "x" * 50, "last"]
    data = build_text_data(options(texts=texts, block_size=64), seed=0)
    assert not data.packing and data.block_size == 51  # 50 chars + bos + eos - 1
    batch = next(iter(data.train_batches(0)))
    assert batch["input_ids"].shape[0] == 4
    pads = ~batch["attention_mask"]
    assert (batch["labels"][pads] == IGNORE_INDEX).all() and pads.any()
    assert len(list(data.val_batches())) == 1


def test_file_and_folder_sources(tmp_path):
    (tmp_path / "a.txt").write_text("First file. " * 40)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("Second file. " * 40)
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    assert len(read_texts(tmp_path)) == 2
    assert read_texts(tmp_path / "a.txt") == ["First file. " * 40]
    data = build_text_data(options(path=str(tmp_path)), seed=0)
    assert isinstance(data, TextDataModule) and data.tokenizer.vocab_size < 30
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(UserError, match="bad.txt is not UTF-8"):
        read_texts(tmp_path)


def test_corpus_too_small_is_a_clear_error():
    with pytest.raises(UserError, match="block_size: the corpus is too small"):
        build_text_data(options(texts=["tiny"], packing=True, block_size=64), seed=0)


@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare" / "input.txt").exists(), reason="shared data absent")
def test_tiny_shakespeare_has_the_known_vocabulary():
    data = build_text_data(options(path=str(SHARED_DATA / "tinyshakespeare" / "input.txt"), block_size=64), 0)
    assert data.tokenizer.vocab_size == 65 + 4  # 65 characters + pad, bos, eos, unk


def test_the_corpus_cache_gives_the_same_text_and_parses_a_changed_file_again(tmp_path):
    root, cache = tmp_path / "lib", tmp_path / "cache"
    (root / "pkg").mkdir(parents=True)
    (root / "a.py").write_text('"""The first module of this little library, with a docstring long enough."""\n')
    (root / "pkg" / "b.py").write_text('def f():\n    """A function whose docstring is long enough to keep."""\n')
    for skipped in (root / "site-packages" / "numpy", root / "pkg" / "tests"):  # not the standard library's prose
        skipped.mkdir(parents=True)
        (skipped / "c.py").write_text('"""A docstring in a folder the corpus skips, long enough to keep."""\n')
    first = stdlib_docstrings(root=root, cache=cache)
    assert len(first) == 2 and list(cache.glob("*.json"))
    assert stdlib_docstrings(root=root, cache=cache) == first  # from the cache
    (root / "a.py").write_text('"""Changed: the module now says something else, and long enough too."""\n')
    assert stdlib_docstrings(root=root, cache=cache)[0].startswith("Changed")
    assert stdlib_docstrings(1, root=root, cache=cache) == stdlib_docstrings(1, root=root)[:1]
    (cache / next(cache.iterdir()).name).write_text("not json")  # a broken cache is parsed again
    assert stdlib_docstrings(root=root, cache=cache)[1] == first[1]

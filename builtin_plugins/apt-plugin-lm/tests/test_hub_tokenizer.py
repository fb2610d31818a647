"""The character and BPE tokenizers saved as Hugging Face tokenizers: AutoTokenizer loads them as a
PreTrainedTokenizerFast giving the project's ids (after <bos>, as the project prompts) and its text back; what
they saved before (char_vocab.json, a bare tokenizer.json) still loads as it did."""

from __future__ import annotations

import json

import pytest

from apt_plugin_lm.tokenization import BPE_FILE, CHAR_FILE, BPETokenizer, CharTokenizer, load_tokenizer

CORPUS = ["To be, or not to be: that is the question.\n\tWhether 'tis nobler  in the mind? Ay!",
          "Zürich, naïve café ✓ 👍\r\nend"] * 8
TEXTS = ["To be, or not to be.", "  two spaces, a\ttab\nand lines\n\n", "Zürich ✓ 👍", "unseen: ΩΩ and € and q",
         "a literal <eos> and <pad> in the text", "spaces , before . marks ! and ? don 't , as written", ""]


def trained(kind: str):
    return CharTokenizer.train(CORPUS) if kind == "char" else BPETokenizer.train(CORPUS, vocab_size=300)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_autotokenizer_loads_the_saved_tokenizer_with_the_same_ids_and_text(kind, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = trained(kind)
    tokenizer.save(tmp_path / "run-tokenizer")  # the run's tokenizer/ folder
    tokenizer.save_pretrained(tmp_path / "model")  # the model folder's root: the Hub files alone
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                                 "special_tokens_map.json"}
    for folder in ("run-tokenizer", "model"):
        hf = AutoTokenizer.from_pretrained(tmp_path / folder)
        assert isinstance(hf, PreTrainedTokenizerFast)
        assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == \
            (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id)
        assert len(hf) == tokenizer.vocab_size and hf.padding_side == "left"  # for generate, as a causal LM's
        for text in TEXTS:
            ids = tokenizer.encode(text)
            assert hf(text).input_ids == [tokenizer.bos_id, *ids], (kind, text)
            assert hf.encode(text, add_special_tokens=False) == ids
            assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == tokenizer.decode(ids), (kind, text)
            # as the text-generation pipeline decodes: its clean-up of spaces before marks leaves the text alone
            assert hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True) == \
                tokenizer.decode(ids), (kind, text)
        # this project's own loader reads both folders back as the same kind of tokenizer
        again = load_tokenizer(tmp_path / folder)
        assert type(again) is type(tokenizer) and all(again.encode(t) == tokenizer.encode(t) for t in TEXTS)


def test_what_the_tokenizers_saved_before_still_loads(tmp_path):
    char, bpe = trained("char"), trained("bpe")
    (tmp_path / "char").mkdir()
    (tmp_path / "char" / CHAR_FILE).write_text(json.dumps({"type": "char", "itos": char.itos}))
    (tmp_path / "bpe").mkdir()
    bpe.tokenizer.save(str(tmp_path / "bpe" / BPE_FILE))  # a bare tokenizer.json, as BPE saved itself
    for folder, tokenizer in (("char", char), ("bpe", bpe)):
        loaded = load_tokenizer(tmp_path / folder)
        assert type(loaded) is type(tokenizer)
        assert all(loaded.encode(t) == tokenizer.encode(t) for t in TEXTS)
        assert loaded.decode(tokenizer.encode(TEXTS[0])) == tokenizer.decode(tokenizer.encode(TEXTS[0]))

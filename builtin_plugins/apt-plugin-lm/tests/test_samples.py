"""The text-samples callback: what it shows, and what it says about a prompt the tokenizer cannot spell."""

from __future__ import annotations

from types import SimpleNamespace

from apt_plugin_lm.model import APTConfig, APTLargeModel
from apt_plugin_lm.samples import TextSamples
from apt_plugin_lm.tokenization import CharTokenizer


def test_a_prompt_character_the_tokenizer_lacks_is_named_once(tmp_path):
    # "Zürich ✓" was shown as "Zrich " with nothing said: the model had been given <unk> for the others
    tokenizer = CharTokenizer.train(["Zrich, hello"])
    model = APTLargeModel(APTConfig(vocab_size=len(tokenizer.itos), d_model=16, num_heads=2, num_layers=1, d_ff=32,
                                    max_seq_len=32))
    said: list[str] = []
    trainer = SimpleNamespace(model=model, data=SimpleNamespace(tokenizer=tokenizer), is_main=True, step=0,
                              log=said.append)
    samples = TextSamples("Zürich ✓ü", max_new_tokens=4, temperature=1.0, top_k=0, seed=0, run_dir=tmp_path)
    samples.on_fit_start(trainer)
    assert said[0] == "text-samples: the tokenizer does not know 'ü', '✓' of the prompt; the model sees <unk> there"
    assert said[1].startswith("--- sample before training ---\nZrich ")
    said.clear()
    TextSamples("hello", 4, 1.0, 0, 0, tmp_path).on_fit_start(trainer)
    assert len(said) == 1 and "does not know" not in said[0]

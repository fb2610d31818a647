"""A run's model/ is a Hugging Face model folder as the trainer writes it, and still what this project's readers
read; `apt-kernel export` writes it for runs exported before, elsewhere, or as safetensors alone, and refuses
what it cannot export with one line and exit 2, changing nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import apt_plugin_lm  # noqa: F401  registers "apt" with transformers' Auto classes
from apt_plugin_lm.export import export_model
from apt_plugin_lm.hub import code_modules
from apt_plugin_lm.model import APTConfig, APTLargeModel
from apt_plugin_lm.tokenization import CHAR_FILE, CharTokenizer, load_tokenizer
from apt_sdk import UserError
from apt_sdk.testing import cli

HUB_TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def test_a_runs_model_folder_loads_in_transformers_and_in_apt(exported_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for kind, run in exported_runs.items():
        folder = run / "model"
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer"} | HUB_TOKENIZER <= names, names
        assert {f"{m}.py" for m in code_modules()} <= names
        hf, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
        apt, own = APTLargeModel.from_pretrained(folder).eval(), load_tokenizer(folder / "tokenizer")
        assert type(own).kind == kind
        ids = tokenizer("the dog sat", return_tensors="pt").input_ids
        assert ids[0].tolist() == [own.bos_id, *own.encode("the dog sat")]
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, apt(ids))


def old_export(run: Path, to: Path) -> Path:
    """A copy of ``run`` whose model/ is as the trainer wrote it before: APT's config, the weights, and a
    tokenizer/ of char_vocab.json alone."""
    shutil.copytree(run, to)
    model, tokenizer = to / "model", load_tokenizer(run / "model" / "tokenizer")
    config = APTConfig.load(model)
    for entry in model.iterdir():
        if entry.name != "model.safetensors":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    config.save(model)
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / CHAR_FILE).write_text(json.dumps({"type": "char", "itos": tokenizer.itos}))
    return to


def test_export_makes_an_old_runs_model_a_hub_folder_in_place(exported_runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = old_export(exported_runs["char"], tmp_path / "old")
    before = APTLargeModel.from_pretrained(run / "model").eval()
    done = cli("export", str(run))
    assert done.returncode == 0, done.stderr
    assert f"wrote {run / 'model'} (hf)" in done.stdout
    hf = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert isinstance(load_tokenizer(run / "model" / "tokenizer"), CharTokenizer)  # still what serve reads
    ids = tokenizer("a cat ate", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, before(ids))


def test_export_elsewhere_and_as_safetensors_alone(exported_runs, tmp_path):
    run = exported_runs["bpe"]
    hub = export_model(run, tmp_path / "hub")
    assert {p.name for p in hub.iterdir()} == {p.name for p in (run / "model").iterdir()}
    lean = export_model(run, tmp_path / "lean", format="safetensors")
    assert {p.name for p in lean.iterdir()} == {"config.json", "model.safetensors", "tokenizer"}
    assert "auto_map" not in json.loads((lean / "config.json").read_text())
    # an export again over an earlier one replaces it: here the lean folder becomes a Hub folder, then lean again
    assert {p.name for p in export_model(run, lean).iterdir()} == {p.name for p in hub.iterdir()}
    assert {p.name for p in export_model(run, lean, "safetensors").iterdir()} == \
        {"config.json", "model.safetensors", "tokenizer"}
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(APTLargeModel.from_pretrained(lean).eval()(ids),
                                   APTLargeModel.from_pretrained(run / "model").eval()(ids))


def test_what_cannot_be_exported_is_one_line_and_exit_2(tmp_path):
    missing = cli("export", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'}: no such run or model folder"]


def make_model(folder: Path, **config) -> Path:
    model = APTLargeModel(APTConfig(vocab_size=20, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_seq_len=16,
                                    **config))
    model.save_pretrained(folder)
    CharTokenizer.train(["abcdefghij"]).save(folder / "tokenizer")
    return folder


@pytest.mark.parametrize("case", ["file", "not a run", "no model", "multimodal", "encoder-decoder", "not apt",
                                  "not json", "unknown keys", "out is a file", "out holds other files"])
def test_each_input_that_cannot_be_exported_is_named(case, tmp_path):
    run, out = tmp_path / "run", None
    expected = {"file": f"{run} is a file", "not a run": f"{run} is not a run folder",
                "no model": f"{run} holds no exported model", "multimodal": "is a multimodal-apt model",
                "encoder-decoder": "is an encoder-decoder APT model", "not apt": "holds a 'llama' model, not an APT",
                "not json": "cannot be read as JSON", "unknown keys": "is not an APT language model's config",
                "out is a file": "is a file; give a folder", "out holds other files": "(notes.txt)"}[case]
    if case == "file":
        run.write_text("x")
    elif case == "not a run":
        (run / "stuff").mkdir(parents=True)
    elif case == "no model":
        (run / "checkpoints").mkdir(parents=True)
        (run / "pipeline.json").write_text("{}")
    elif case == "multimodal":
        (run / "model").mkdir(parents=True)
        (run / "model" / "config.json").write_text(json.dumps({"multimodal": {}, "decoder": {}}))
    elif case == "encoder-decoder":
        make_model(run / "model", num_encoder_layers=1)
    elif case in ("not apt", "not json", "unknown keys"):
        (run / "model").mkdir(parents=True)
        (run / "model" / "config.json").write_text({"not apt": json.dumps({"model_type": "llama", "hidden_size": 8}),
                                                    "not json": "{", "unknown keys": '{"d_modle": 8}'}[case])
    else:
        make_model(run / "model")
        out = tmp_path / "out"
        if case == "out is a file":
            out.write_text("mine")
        else:
            out.mkdir()
            (out / "notes.txt").write_text("mine")
            (out / "config.json").write_text("mine too")
    before = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=None) as error:
        export_model(run, out)
    assert expected in str(error.value) and "\n" not in str(error.value)
    after = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written, nothing left behind

"""What would fail later fails as the model is built, before the run folder is claimed: one clear line naming the
option, exit 2 on the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from apt_sdk import PipelineError, UserError
from conftest import CHARS, SHAKESPEARE, pipeline, shakespeare_tokenizer

LLAMA_LORA = 'lora = { target_modules = ["q_proj", "v_proj"] }'


def refused(run_pipeline, tmp_path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(PipelineError) as caught:
        run_pipeline(text, overrides)
    assert not (tmp_path / "run").exists()  # nothing claimed, nothing written
    return str(caught.value)


def test_a_model_folder_that_does_not_exist(hf_models, run_pipeline, tmp_path):
    message = refused(run_pipeline, tmp_path, pipeline(tmp_path / "nowhere", tokenizer=hf_models["llama"]))
    assert "[model] name_or_path" in message and f"there is no folder '{tmp_path / 'nowhere'}'" in message


def test_a_folder_without_config_json(hf_models, run_pipeline, tmp_path):
    (tmp_path / "empty").mkdir()
    message = refused(run_pipeline, tmp_path, pipeline(tmp_path / "empty", tokenizer=hf_models["llama"]))
    assert "[model] name_or_path" in message and "holds no config.json" in message


def test_a_tokenizer_folder_that_does_not_exist(hf_models, run_pipeline, tmp_path):
    message = refused(run_pipeline, tmp_path, pipeline(hf_models["llama"], tokenizer=tmp_path / "no-tokenizer"))
    assert "[data] tokenizer" in message and "not found" in message


@pytest.mark.slow
def test_a_hub_id_offline_says_to_download_it_first_with_exit_2(hf_models, tmp_path):
    """Offline (HF_HUB_OFFLINE), a hub id that is not in the cache fails at once, with what to run instead."""
    path = tmp_path / "hub.toml"
    path.write_text(pipeline(hf_models["llama"]).replace(f"name_or_path = {str(hf_models['llama'])!r}",
                                                          'name_or_path = "someone/tiny-llama"'))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    run = subprocess.run([sys.executable, "-m", "apt_kernel.cli", "run", str(path), "--no-progress", "--set",
                          f"pipeline.output_dir={str(tmp_path / 'run')!r}"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert "[model] name_or_path" in line and "HF_HUB_OFFLINE is set" in line
    assert "hf download someone/tiny-llama --local-dir models/tiny-llama" in line
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()


def test_a_target_module_the_model_lacks_names_the_layers_it_has(hf_models, run_pipeline, tmp_path):
    text = pipeline(hf_models["gpt2"], 'lora = { target_modules = ["c_attn", "q_proj"] }')
    message = refused(run_pipeline, tmp_path, text)
    assert "[model] lora" in message and "GPT2LMHeadModel has no module named 'q_proj'" in message
    assert "its linear layers are c_attn, c_fc, c_proj, lm_head" in message


def test_a_misspelt_lora_key(hf_models, run_pipeline, tmp_path):
    message = refused(run_pipeline, tmp_path, pipeline(hf_models["llama"], "lora = { rank = 4 }"))
    assert "[model] lora" in message and "unknown lora key 'rank'" in message


@pytest.fixture(scope="module")
def bigger_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer-400")
    shakespeare_tokenizer(SHAKESPEARE.read_text(encoding="utf-8")[:CHARS], vocab_size=400).save_pretrained(folder)
    return folder


def test_a_tokenizer_larger_than_the_embeddings_names_both_numbers(hf_models, bigger_tokenizer, run_pipeline,
                                                                 tmp_path):
    message = refused(run_pipeline, tmp_path, pipeline(hf_models["llama"], tokenizer=bigger_tokenizer))
    assert "the tokenizer has 400 tokens but the model's embeddings have 320 rows" in message
    assert "resize_embeddings = true" in message


def test_resize_embeddings_grows_them_to_the_tokenizer(hf_models, bigger_tokenizer, run_pipeline):
    result, context = run_pipeline(pipeline(hf_models["llama"], "resize_embeddings = true",
                                            tokenizer=bigger_tokenizer), ["trainer.max_steps=2"])
    assert context.model.model.get_input_embeddings().num_embeddings == 400 and result["steps"] == 2
    assert context.model.config.model["vocab_size"] == 400  # what a checkpoint's config rebuilds


def test_float16_weights_train_only_under_an_adapter(hf_models, run_pipeline, tmp_path):
    message = refused(run_pipeline, tmp_path, pipeline(hf_models["llama"], 'dtype = "float16"'))
    assert "[model] dtype" in message and "use \"bfloat16\"" in message and "or lora" in message


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    """The branch a machine without bfloat16 takes (a pre-Ampere GPU), on this one by telling torch so."""
    from apt_plugin_hf.loading import check_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    with pytest.raises(UserError, match="Tesla T4 does not compute in bfloat16"):
        check_dtype("bfloat16", lora=False)


def test_sequences_longer_than_the_models_positions(hf_models, run_pipeline, tmp_path):
    message = refused(run_pipeline, tmp_path, pipeline(hf_models["gpt2"]), ["data.block_size=100"])
    assert "block_size (100) is longer than the model's max_position_embeddings (64)" in message


def without_source(text: str, folder, lines: str) -> str:
    """The pipeline with ``lines`` in place of its ``name_or_path``."""
    return text.replace(f"name_or_path = {str(folder)!r}", lines)


@pytest.mark.parametrize(("model", "expected"), [
    ('name_or_path = "{folder}"\nconfig = {{ model_type = "llama" }}', "[model] name_or_path: give name_or_path (a "
                                                                       "pretrained model's folder, or a hub id) or "
                                                                       "config (a new model: config = { model_type = "
                                                                       "\"llama\", ... }), not both"),
    ("", "[model] name_or_path: give name_or_path (a pretrained model's folder, or a hub id) or config"),
    ('config = {{ model_type = "llama" }}\n' + LLAMA_LORA.replace("{", "{{").replace("}", "}}"),
     "[model] lora: a LoRA adapter trains on pretrained weights"),
    ('name_or_path = "{folder}"\nmerge_lora = true', "[model] merge_lora: there is no adapter to merge"),
    ('config = {{ model_type = "llama", hiden_size = 32 }}',
     "[model] config: unknown LlamaConfig field 'hiden_size' (did you mean 'hidden_size'?)"),
    ('config = {{ model_type = "lama" }}', "[model] config: model_type 'lama' is not a transformers architecture"),
])
def test_contradictory_or_misspelt_options(hf_models, run_pipeline, tmp_path, model, expected):
    folder = hf_models["llama"]
    text = without_source(pipeline(folder), folder, model.format(folder=folder))
    assert expected in refused(run_pipeline, tmp_path, text)

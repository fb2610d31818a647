"""``hf-causal-lm`` trained by the builtin trainer, whole and with LoRA, on a Llama-architecture and a
GPT-2-architecture model: the loss falls, the text-samples callback generates, and model/ loads with plain
``transformers`` (and ``peft``) giving the logits of the trained model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import pipeline

LORA = {"llama": 'lora = { r = 8, alpha = 16, dropout = 0.05, target_modules = ["q_proj", "v_proj"] }',
        "gpt2": 'lora = { r = 8, alpha = 16, dropout = 0.05, target_modules = ["c_attn"] }'}
SAMPLES = '\n[[callbacks]]\nuse = "text-samples"\nprompt = "ROMEO:"\nmax_new_tokens = 12\n'


def probe_batch(context) -> torch.Tensor:
    return next(iter(context.data.val_batches()))["input_ids"][:2]


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def val_loss(logits_of_ids, context) -> float:
    """The mean token loss over the whole validation split (the run validates on a few of its batches)."""
    total = count = 0.0
    with torch.no_grad():
        for batch in context.data.val_batches():
            logits = logits_of_ids(batch["input_ids"])
            total += F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum").item()
            count += batch["labels"].numel()
    return total / count


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_whole_model_trains_and_model_folder_loads_in_transformers(arch, hf_models, run_pipeline, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, context = run_pipeline(pipeline(hf_models[arch], callbacks=SAMPLES))
    assert set(result["samples"]) == {"before", "after"} and result["samples"]["after"].startswith("ROMEO:")
    pretrained = AutoModelForCausalLM.from_pretrained(hf_models[arch]).eval()
    before = val_loss(lambda ids: pretrained(input_ids=ids).logits, context)
    after = val_loss(context.model.eval(), context)
    assert after < before - 0.1, (before, after)  # about 0.2 in 30 steps
    folder = tmp_path / "run" / "model"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    ids = probe_batch(context)
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(loaded, ids), context.model.eval()(ids), rtol=0, atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)  # the folder is complete
    assert tokenizer.encode("ROMEO:") == context.data.tokenizer.encode("ROMEO:")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_trains_only_the_adapter_which_loads_on_its_base_with_peft(arch, hf_models, run_pipeline, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    result, context = run_pipeline(pipeline(hf_models[arch], LORA[arch], callbacks=SAMPLES, learning_rate=1e-2))
    assert result["samples"]["after"].startswith("ROMEO:")
    model = context.model.eval()
    after = val_loss(model, context)
    with model.model.disable_adapter():
        before = val_loss(model, context)
    # a rank-8 adapter on two attention projections of a 2-layer, 32-wide model learns slowly: about 0.02 in 30
    # steps (a whole-model fine-tune: about 0.2), but it falls
    assert after < before - 0.01, (before, after)
    # only the adapter trained: every base weight is the folder's, bit for bit
    checkpoint = torch.load(result["checkpoint"], weights_only=True)["model_state_dict"]
    original = load_file(hf_models[arch] / "model.safetensors")
    base = {k.removeprefix("model.base_model.model.").replace(".base_layer", ""): v for k, v in checkpoint.items()
            if "lora_" not in k}
    assert {k for k in base if k in original} == set(original)
    assert all(torch.equal(base[k], v) for k, v in original.items())
    trained = {k for k, p in context.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in k for k in trained)
    assert any(checkpoint[k].abs().sum() > 0 for k in checkpoint if "lora_B" in k)  # B starts at zero
    # model/ is PEFT's adapter folder, and it names its base
    folder = tmp_path / "run" / "model"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "model.safetensors").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_models[arch]), folder)
    ids = probe_batch(context)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(loaded, ids), context.model.eval()(ids), rtol=0, atol=1e-6)
    assert loaded.peft_config["default"].base_model_name_or_path == str(hf_models[arch])


def test_merge_lora_exports_a_whole_model_that_transformers_loads_alone(hf_models, run_pipeline, tmp_path):
    from transformers import AutoModelForCausalLM

    _, context = run_pipeline(pipeline(hf_models["llama"], LORA["llama"] + "\nmerge_lora = true"),
                              ["trainer.max_steps=10"])
    folder = tmp_path / "run" / "model"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    ids = probe_batch(context)
    merged = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(merged, ids), context.model.eval()(ids), rtol=0, atol=1e-5)
    assert any("lora_" in k for k, _ in context.model.named_parameters())  # the model in memory kept its adapter


def test_flops_per_token_counts_matrix_weights_and_attention(hf_models, run_pipeline):
    """6 per weight of a whole model (a tied head counted, embedding lookups not); with LoRA, 4 per frozen weight
    (forward, and backward to the activations) and 6 per adapter weight; plus 12·L·d·T of attention."""
    from transformers import AutoModelForCausalLM

    from apt_plugin_hf.model import HFCausalLM, HFConfig

    gpt2 = AutoModelForCausalLM.from_pretrained(hf_models["gpt2"])
    assert gpt2.config.tie_word_embeddings
    matrices = sum(p.numel() for n, p in gpt2.named_parameters() if not n.startswith(("transformer.wte",
                                                                                        "transformer.wpe")))
    matrices += gpt2.lm_head.weight.numel()  # tied to wte, which named_parameters lists once
    whole = HFCausalLM.assemble(gpt2, HFConfig(model=gpt2.config.to_dict()))
    assert whole.flops_per_token(32) == 6 * matrices + 12 * 2 * 32 * 32
    lora = HFCausalLM.assemble(AutoModelForCausalLM.from_pretrained(hf_models["gpt2"]),
                               HFConfig(model={}, lora={"r": 4, "alpha": 8, "dropout": 0.0,
                                                        "target_modules": ["c_attn"], "modules_to_save": None}))
    adapter = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert adapter == 4 * (32 + 96) * 2  # A [4, 32] and B [96, 4] in each of 2 layers
    assert lora.flops_per_token(32) == 4 * (matrices + adapter) + 2 * adapter + 12 * 2 * 32 * 32

"""The APT model as a transformers model (APTForCausalLM): the same logits as APT's own forward, the same greedy
tokens from transformers' generate with its KV cache, in both attention modes; registered by importing
apt_plugin_lm; its folder's code is the package's own and imports only torch and transformers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import apt_plugin_lm  # noqa: F401  registers "apt" with transformers' Auto classes
from apt_plugin_lm import hub
from apt_plugin_lm.model import APTConfig, APTLargeModel

MODES = ["autopoietic", "sdpa"]
EOS = 2


def tiny(mode: str, seed: int = 0) -> APTLargeModel:
    """A small APT model whose refinement is on (its gates away from their starting 0), with weights large enough
    that its greedy tokens change with the tokens and positions before them (at initialisation it repeats one)."""
    torch.manual_seed(seed)
    model = APTLargeModel(APTConfig(vocab_size=40, d_model=32, num_heads=2, num_layers=2, d_ff=64, max_seq_len=48,
                                    attention=mode))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gate"):
                parameter.fill_(0.8)
            elif parameter.dim() == 2:
                parameter.normal_(0.0, 1.0 if name.startswith("pos.") else 0.3)
    return model.eval()


def load_hub(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()  # no trust_remote_code: the import registered it


def until_eos(row: list[int]) -> list[int]:
    return row[:row.index(EOS) + 1] if EOS in row else row


@pytest.mark.parametrize("mode", MODES)
def test_the_hub_model_gives_the_apt_models_logits(mode, tmp_path):
    apt = tiny(mode)
    apt.save_pretrained(tmp_path)
    hf = load_hub(tmp_path)
    assert type(hf).__name__ == "APTForCausalLM" and type(hf).__module__ == "apt_plugin_lm.modeling_apt"
    assert hf.config.attention == mode and hf.lm_head.weight is hf.tok.weight  # tied, as APT's are
    ids = torch.randint(4, 40, (2, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, apt(ids), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hf(ids, attention_mask=mask).logits, apt(ids, attention_mask=mask),
                                   rtol=1e-5, atol=1e-6)
        first = hf(ids[:, :12], use_cache=True)
        assert first.past_key_values.get_seq_length() == 12
        step = hf(ids[:, 12:13], past_key_values=first.past_key_values, use_cache=True).logits[:, -1]
        # one token against the cache is another order of float32 sums than the whole sequence: logits near 0
        # are differences of terms near 1, so their last digits differ by the CPU's kernels (1.6e-6 on a
        # machine whose kernels differ from the one this was written on)
        torch.testing.assert_close(step, apt(ids[:, :13])[:, -1], rtol=1e-5, atol=1e-5)
        # the labels' loss is transformers' causal LM loss: the next token's cross-entropy
        loss = hf(ids, labels=ids).loss
        expected = torch.nn.functional.cross_entropy(apt(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("mode", MODES)
def test_generate_with_the_kv_cache_gives_the_apt_greedy_tokens(mode, tmp_path):
    apt = tiny(mode, seed=3)
    apt.save_pretrained(tmp_path)
    hf = load_hub(tmp_path)
    prompt = torch.tensor([[1, 7, 9, 11, 5]])
    out = hf.generate(prompt, max_new_tokens=25, do_sample=False, return_dict_in_generate=True)
    expected = apt.generate(prompt, max_length=30, do_sample=False, eos_token_id=EOS)
    assert out.sequences.tolist() == expected.tolist()
    assert out.past_key_values.get_seq_length() == out.sequences.shape[1] - 1  # decoded with the cache
    # prompts of different lengths, left-padded as transformers pads them: each row as it is alone
    rows = [[1, 7, 9, 11, 5], [1, 30], [1, 12, 13, 14, 15, 16, 17, 18]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batch = hf.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False)
    for row, generated in zip(rows, batch.tolist(), strict=True):
        alone = apt.generate(torch.tensor([row]), max_length=len(row) + 15, do_sample=False, eos_token_id=EOS)
        assert until_eos(generated[width:]) == until_eos(alone[0, len(row):].tolist())


def test_a_model_saved_by_transformers_carries_its_code_and_loads_back_in_apt(tmp_path):
    apt = tiny("autopoietic")
    apt.save_pretrained(tmp_path / "apt")
    load_hub(tmp_path / "apt").save_pretrained(tmp_path / "saved")
    for name in hub.code_modules():
        assert (tmp_path / "saved" / f"{name}.py").read_bytes() == (hub.PACKAGE / f"{name}.py").read_bytes()
    again = APTLargeModel.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(4, 40, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), apt(ids))


def test_the_folders_code_is_the_packages_own_and_imports_only_torch_and_transformers(tmp_path):
    from transformers.dynamic_module_utils import get_relative_import_files

    tiny("sdpa").save_pretrained(tmp_path)
    modules = hub.code_modules()
    assert {"configuration_apt", "modeling_apt", "model", "config", "functions"} <= set(modules)
    # what transformers' loader will ask for, from the two files auto_map names, is what the folder holds
    asked = {Path(f).stem for entry in hub.ENTRY_MODULES for f in get_relative_import_files(tmp_path / f"{entry}.py")}
    assert asked | set(hub.ENTRY_MODULES) == set(modules)
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers"}
    for name in modules:
        source = tmp_path / f"{name}.py"
        assert source.read_bytes() == (hub.PACKAGE / f"{name}.py").read_bytes(), name
        tree = ast.parse(source.read_text())
        at_load = {_top(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)} - {None}
        anywhere = {_top(node) for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)} - {None}
        assert at_load <= allowed, (name, at_load - allowed)
        # safetensors only inside APT's own save and load, never called there (transformers requires it anyway)
        assert anywhere <= allowed | {"safetensors"}, (name, anywhere - allowed)


def _top(node: ast.Import | ast.ImportFrom) -> str | None:
    if isinstance(node, ast.ImportFrom):
        return None if node.level else node.module.split(".")[0]
    return node.names[0].name.split(".")[0]


def test_importing_the_plugin_registers_the_architecture_before_transformers_is_loaded(tmp_path):
    tiny("autopoietic").save_pretrained(tmp_path)
    code = ("import sys, apt_plugin_lm\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
            "from transformers import AutoConfig, AutoModelForCausalLM\n"
            "print(type(AutoConfig.from_pretrained(sys.argv[1])).__module__, "
            "type(AutoModelForCausalLM.from_pretrained(sys.argv[1])).__module__)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["[]", "apt_plugin_lm.configuration_apt apt_plugin_lm.modeling_apt"]


def test_a_registration_waits_for_its_module_and_a_failing_one_only_warns(tmp_path, monkeypatch):
    from apt_plugin_lm.hub_registration import _AfterImport

    (tmp_path / "fake_auto").mkdir()
    (tmp_path / "fake_auto" / "__init__.py").write_text("")
    (tmp_path / "fake_auto" / "configs.py").write_text("NAME = 'configs'\n")
    (tmp_path / "fake_auto" / "models.py").write_text("NAME = 'models'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def fails(module):
        raise RuntimeError("no such class")

    finder = _AfterImport({"fake_auto.configs": lambda module: seen.append(module.NAME), "fake_auto.models": fails})
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        import fake_auto.configs  # noqa: F401

        assert seen == ["configs"]  # once it executed, with its names defined
        with pytest.warns(UserWarning, match="could not register the APT architecture.*no such class"):
            import fake_auto.models
        assert fake_auto.models.NAME == "models" and finder.hooks == {}
    finally:
        for name in ("fake_auto", "fake_auto.configs", "fake_auto.models"):
            sys.modules.pop(name, None)

"""A kernel-only install: ``pip install apt-plugin-hf`` into an environment holding the kernel and the SDK adds the
model ``hf-causal-lm`` (its third-party requirements, torch, transformers and peft among them, are there already:
nothing is downloaded, --no-index); its factory builds a model from a config; ``pip uninstall`` removes it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from apt_sdk.testing import fresh_venv

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)

REPO = Path(__file__).resolve().parents[3]
BUILD = """
from apt_kernel.api import Kernel
from apt_sdk import BuildContext

kernel = Kernel()
kernel.load(["apt-plugin-hf"])
factory = kernel.registry.get("model", "hf-causal-lm").factory
options = {"config": {"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                      "num_hidden_layers": 1, "num_attention_heads": 2}, "dtype": "float32",
           "gradient_checkpointing": False, "merge_lora": False, "resize_embeddings": False}
model = factory(options, BuildContext("demo", 0, None, {}))
print(type(model.model).__name__, sum(p.numel() for p in model.parameters()))
"""


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_pip_install_adds_the_model_and_uninstall_removes_it(tmp_path):
    python = fresh_venv(tmp_path / "env", editable=(REPO, REPO / "sdk"))
    # a copy without its tests: building must not write into the repository
    shutil.copytree(REPO / "builtin_plugins" / "apt-plugin-hf", tmp_path / "apt-plugin-hf",
                    ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    install = run(python, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "./apt-plugin-hf",
                  cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    listed = run(python, "-m", "apt_kernel.cli", "plugins", "list", cwd=tmp_path).stdout
    assert [line.split()[:3] for line in listed.splitlines() if "hf-causal-lm" in line] == \
        [["apt-plugin-hf", "0.1.0", "installed"]], listed
    built = run(python, "-c", BUILD, cwd=tmp_path)
    # embeddings and head 2 x 64 x 16, attention 4 x 16 x 16, MLP 3 x 16 x 32, norms 3 x 16
    assert built.returncode == 0 and built.stdout.split() == ["LlamaForCausalLM", "4656"], built.stderr[-2000:]
    assert run(python, "-m", "pip", "uninstall", "-y", "-q", "apt-plugin-hf", cwd=tmp_path).returncode == 0
    listed = run(python, "-m", "apt_kernel.cli", "plugins", "list", cwd=tmp_path).stdout
    assert "hf-causal-lm" not in listed

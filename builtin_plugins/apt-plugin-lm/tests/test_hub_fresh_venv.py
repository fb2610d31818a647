"""A run's exported model/ loads where only torch and transformers are installed (their own dependencies, and
nothing of this project): AutoModelForCausalLM with trust_remote_code and AutoTokenizer, as a Hub model. Its
logits are APT's own forward's, generate's greedy tokens APTLargeModel.generate's, and the text-generation
pipeline writes them; for a character tokenizer with autopoietic attention and a BPE one with SDPA.

The venv is made once per session from this one's installed packages (linked, nothing downloaded:
apt_sdk.testing.fresh_venv), keeping the distributions torch and transformers require and no other."""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from apt_plugin_lm.model import APTLargeModel
from apt_plugin_lm.tokenization import load_tokenizer
from apt_sdk.testing import fresh_venv

PROMPT, NEW_TOKENS = "a frog", 16
CHECK = Path(__file__).with_name("hub_check.py")


def requirement_closure(*names: str) -> set[str]:
    """The installed distributions ``names`` need, themselves included (extras left out; one this environment does
    not have, as a GPU library for another platform, is not needed here either)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


@pytest.fixture(scope="session")
def hub_python(tmp_path_factory) -> Path:
    """The python of a venv holding torch, transformers and what they require, nothing else."""
    entries = {str(file).split("/")[0] for name in requirement_closure("torch", "transformers")
               for file in metadata.distribution(name).files or [] if not str(file).startswith("..")}
    entries.discard("__pycache__")
    keep = "|".join(re.escape(entry) for entry in sorted(entries))
    return fresh_venv(tmp_path_factory.mktemp("hub-venv") / "venv", exclude=rf"^(?!(?:{keep})$)")


def test_an_exported_run_loads_in_plain_transformers_and_generates_as_apt(hub_python, exported_runs, tmp_path):
    folders = {kind: run / "model" for kind, run in exported_runs.items()}
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    out = tmp_path / "results.json"
    done = subprocess.run([str(hub_python), str(CHECK), str(out), PROMPT, str(NEW_TOKENS),
                           *map(str, folders.values())], capture_output=True, text=True, env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["project_importable"] == []
    for kind, folder in folders.items():
        got = results[str(folder)]
        assert got["class"].startswith("transformers_modules.") and got["class"].endswith(".APTForCausalLM"), got
        apt, tokenizer = APTLargeModel.from_pretrained(folder).eval(), load_tokenizer(folder / "tokenizer")
        ids = [tokenizer.bos_id, *tokenizer.encode(PROMPT)]
        assert got["ids"] == got["plain_ids"] == ids, kind
        assert got["tokenizer"] in ("TokenizersBackend", "PreTrainedTokenizerFast")  # one class in transformers 5
        prompt = torch.tensor([ids])
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(got["logits"]), apt(prompt)[0], rtol=1e-5, atol=1e-5)
        greedy = apt.generate(prompt, max_length=len(ids) + NEW_TOKENS, do_sample=False,
                              eos_token_id=tokenizer.eos_id)[0].tolist()
        assert got["greedy"] == greedy, kind
        assert got["text"] == PROMPT + tokenizer.decode(greedy[len(ids):]), kind

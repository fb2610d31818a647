"""A saved APT model folder that is also a Hugging Face model repository, as custom models on the Hub are:
``config.json`` carries ``model_type``, ``architectures`` and an ``auto_map`` naming the modeling code, and that
code is in the folder, so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it
where only ``torch`` and ``transformers`` are installed.

The code is this package's own modules, copied as they are when the model is saved: ``configuration_apt.py``
and ``modeling_apt.py`` and every module they import, found by following their relative imports as
``transformers``' loader does, so the folder holds what the loader will ask for and nothing kept by hand.
Nothing here imports ``transformers``: the trainer's export calls it at the end of every run.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

from .config import CONFIG_FILE, MODEL_TYPE, APTConfig

PACKAGE = Path(__file__).parent
ENTRY_MODULES = ("configuration_apt", "modeling_apt")
AUTO_MAP = {"AutoConfig": "configuration_apt.APTLMConfig", "AutoModelForCausalLM": "modeling_apt.APTForCausalLM"}
ARCHITECTURE = "APTForCausalLM"


def code_modules() -> list[str]:
    """The modules the folder needs: the entry modules and, transitively, every module they import relatively
    (at the top or inside a function, as ``transformers`` counts them), sorted."""
    found: set[str] = set()
    todo = list(ENTRY_MODULES)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        todo += [node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module]
    return sorted(found)


def hub_config(config: APTConfig, dtype: str = "float32") -> dict:
    """``config.json`` of a Hub folder: the APT configuration and what ``transformers`` reads to load it."""
    return {**config.to_dict(), "model_type": MODEL_TYPE, "architectures": [ARCHITECTURE], "auto_map": AUTO_MAP,
            "tie_word_embeddings": config.tie_embeddings, "dtype": dtype}


def write_hub_files(directory: str | Path, config: APTConfig, dtype: str = "float32") -> None:
    """``config.json`` and the modeling code in ``directory`` (created); the weights are the caller's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(hub_config(config, dtype), indent=2))
    for name in code_modules():
        shutil.copyfile(PACKAGE / f"{name}.py", directory / f"{name}.py")

"""pytest fixtures for tests that train a tiny APT language model (loaded automatically with the plugin).

``tiny_pipeline``: a pipeline file of 4 steps on a 20,000-character corpus, output in ``tmp_path/run``.
``TINY_PIPELINE``: its text, with ``{out}`` for the output folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_PIPELINE = """
[pipeline]
name = "tiny"
seed = 3
output_dir = "{out}"

[data]
use = "text"
corpus = "python-stdlib-docs"
max_chars = 20000
block_size = 32
batch_size = 8

[model]
use = "apt-lm"
d_model = 32
num_heads = 2
num_layers = 1
d_ff = 64

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = 4
eval_batches = 2
log_every = 0
"""


@pytest.fixture
def tiny_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_PIPELINE.format(out=(tmp_path / "run").as_posix()))
    return path

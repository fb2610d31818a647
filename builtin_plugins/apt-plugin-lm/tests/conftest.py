"""Every test here gets its own plugin-status memory and no APT_*_PLUGINS selection (the SDK's apt_isolated_env).

``exported_runs``: two tiny runs trained once per session, as a user trains them (``apt-kernel run``'s Python API),
on a verse they learn in a few steps, so what they generate depends on every token and position before it:
``"char"`` (a character tokenizer, autopoietic attention) and ``"bpe"`` (BPE, SDPA attention)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apt_sdk.isolation import apt_isolate_every_test  # noqa: F401
from apt_sdk.testing import SELECTION_VARIABLES

VERSE = "the cat sat on the mat; the dog ate a frog.\n" * 300
PIPELINE = """
[pipeline]
name = "verse"
seed = 3
output_dir = "{out}"

[data]
use = "text"
path = "{text}"
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
max_steps = 40
learning_rate = 0.01
eval_batches = 2
log_every = 0
"""
RUNS = {"char": ['data.tokenizer="char"', 'model.attention="autopoietic"'],
        "bpe": ['data.tokenizer="bpe"', "data.bpe_vocab_size=300", 'model.attention="sdpa"']}


@pytest.fixture(scope="session")
def exported_runs(tmp_path_factory) -> dict[str, Path]:
    from apt_kernel.api import run_pipeline

    root = tmp_path_factory.mktemp("exported-runs")
    text = root / "verse.txt"
    text.write_text(VERSE)
    with pytest.MonkeyPatch.context() as env:  # the session's own plugin-status memory, as apt_isolated_env gives
        env.setenv("APT_KERNEL_HOME", str(root / "apt-home"))
        for name in SELECTION_VARIABLES:
            env.delenv(name, raising=False)
        for name, overrides in RUNS.items():
            run_pipeline(PIPELINE.format(out=(root / name).as_posix(), text=text.as_posix()), overrides)
    return {name: root / name for name in RUNS}

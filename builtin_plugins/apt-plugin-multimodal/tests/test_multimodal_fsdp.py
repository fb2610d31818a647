"""A multimodal model trained sharded (FSDP, two processes on torchrun with gloo on the CPU) is exported: the
trainer rebuilds the whole model on rank 0 through the Model protocol's ``from_config`` (it called
``type(model)(model.config)``, which a ``MultimodalAPTModel`` refuses with a TypeError)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_multimodal_pipeline import PIPELINE, write_manifests

from apt_plugin_multimodal import MultimodalAPTModel

pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]  # torchrun, two processes


def test_a_multimodal_model_trained_under_fsdp_is_exported_whole(tmp_path):
    write_manifests(tmp_path / "data")
    (tmp_path / "p.toml").write_text(PIPELINE.format(folder=tmp_path / "data"))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "apt_kernel.cli", "run", str(tmp_path / "p.toml"), "--no-progress",
               "--nproc-per-node", "2", "--set", "trainer.strategy='fsdp'", "--set", "trainer.max_steps=2",
               "--set", "trainer.eval_every=0", "--set", "trainer.export='last'",
               "--set", f"pipeline.output_dir={str(run)!r}"]
    env = dict(os.environ, APT_KERNEL_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    exported = MultimodalAPTModel.from_pretrained(run / "model")
    assert exported.vision is not None and exported.audio is not None
    # the last step's weights, whole: those the (gathered, single-file) checkpoint of that step holds
    saved = torch.load(next((run / "checkpoints").glob("*_step2.pt")), weights_only=True)["model_state_dict"]
    weights = exported.state_dict()
    assert saved.keys() == weights.keys()
    assert all(torch.equal(weights[name], value) for name, value in saved.items())

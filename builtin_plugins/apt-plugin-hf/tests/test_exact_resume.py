"""Exact resume of ``hf-causal-lm`` runs: killed with SIGKILL inside an optimizer step (mid-epoch, mid-window of
gradient accumulation), then ``--resume latest``, a run ends bit for bit where an uninterrupted one does: weights
(the LoRA adapter's and the frozen base's), optimizer moments, schedule and every step's loss. Each run is its
own ``apt-kernel run`` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import pipeline

pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]
PLUGINS = Path(__file__).resolve().parent / "plugins"
STEPS = 12  # epochs of 7 steps (3,000 characters, batches of 4, 2 per step): the kill is inside the second
# the adapter with dropout (random streams), under gradient checkpointing (the forward recomputed) and bf16 autocast
MODEL = ('lora = { r = 4, alpha = 8, dropout = 0.1, target_modules = ["q_proj", "v_proj"] }\n'
         "gradient_checkpointing = true")
TRAINER = 'precision = "bf16"'


def start(tmp_path: Path, folder: Path, name: str, freeze_after: int = -1,
          *extra: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / name
    path = tmp_path / f"{name}.toml"
    path.write_text(pipeline(folder, MODEL, f"epochs = 100\naccumulate_grad_batches = 2\ntemp_checkpoint_freq = 3\n"
                                            f"deterministic = true\nexport = false\n{TRAINER}",
                             callbacks=f'[[callbacks]]\nuse = "freeze"\nafter_step = {freeze_after}\n'
                                       f'ready_file = "{out}.frozen"\n'))
    args = [sys.executable, "-m", "apt_kernel.cli", "run", str(path), "--no-progress", "--plugins-dir", str(PLUGINS),
            "--set", f"pipeline.output_dir={str(out)!r}", "--set", f"trainer.max_steps={STEPS}",
            "--set", "data.max_chars=3000", "--set", "data.batch_size=4", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same threads in every run: the same reduction order
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), out


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout + stderr


def final_state(out: Path) -> dict:
    return torch.load(next((out / "checkpoints").glob(f"*_step{STEPS}.pt")), weights_only=True)


def assert_equal(x, y, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            assert_equal(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def test_lora_run_killed_mid_step_then_resumed_is_bitwise_exact(hf_models, tmp_path):
    whole, whole_out = start(tmp_path, hf_models["llama"], "whole")
    killed, out = start(tmp_path, hf_models["llama"], "killed", 10)
    deadline = time.time() + 240
    while not Path(f"{out}.frozen").exists():
        assert killed.poll() is None and time.time() < deadline, finish(killed)[1]
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)  # inside step 11, after its first micro-batch: the window is half done
    assert finish(killed)[0] == -signal.SIGKILL
    code, output = finish(whole)
    assert code == 0, output
    resumed, _ = start(tmp_path, hf_models["llama"], "killed", 10, "--resume", "latest")
    code, output = finish(resumed)
    assert code == 0, output
    resumed_from = re.search(r"resumed from (\S+) \(epoch (\d+), step (\d+)\)", output)
    assert resumed_from and resumed_from.group(1).endswith("temp/apt_temp_step9.pt"), output
    a, b = final_state(whole_out), final_state(out)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "position"):
        assert_equal(a[key], b[key], key)
    assert a["loss_history"] == b["loss_history"] and len(a["loss_history"]) == STEPS
    assert int(a["epoch"]) == 1 and int(resumed_from.group(2)) == 1  # resumed inside the second epoch
    adapter = [k for k in a["model_state_dict"] if "lora_B" in k]  # it trained (B starts at zero)
    assert adapter and all(a["model_state_dict"][k].abs().sum() > 0 for k in adapter)

"""``hf-causal-lm`` with LoRA on torchrun, 2 CPU processes (gloo): DDP and FSDP train the same adapter (that DDP
trains as one process does with the same global batch is the trainer's test, for any model), the text-samples
callback generates on a sharded model, and an FSDP run's model/ (written from a model rebuilt through
``from_config``) is PEFT's adapter folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import pipeline

pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]
LORA = 'lora = { r = 4, alpha = 8, dropout = 0.0, target_modules = ["q_proj", "v_proj"] }'
SAMPLES = '[[callbacks]]\nuse = "text-samples"\nprompt = "ROMEO:"\nmax_new_tokens = 8\n'


def launch(tmp_path: Path, folder: Path, name: str, *extra: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.toml"
    path.write_text(pipeline(folder, LORA, "max_steps = 8", callbacks=SAMPLES).replace("max_steps = 30\n", ""))
    args = [sys.executable, "-m", "apt_kernel.cli", "run", str(path), "--no-progress",
            "--set", f"pipeline.output_dir={str(tmp_path / name)!r}", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)


def done(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("training hung") from None
    assert proc.returncode == 0, out + err
    return out + err


def adapter(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    state = torch.load(next((tmp_path / name / "checkpoints").glob("*_step8.pt")), weights_only=True)
    return {k: v for k, v in state["model_state_dict"].items() if "lora_" in k}


def test_ddp_and_fsdp_train_the_same_adapter(hf_models, tmp_path):
    folder = hf_models["llama"]
    runs = {"ddp": launch(tmp_path, folder, "ddp", "--nproc-per-node", "2"),
            "fsdp": launch(tmp_path, folder, "fsdp", "--nproc-per-node", "2", "--set", "trainer.strategy='fsdp'")}
    outputs = {name: done(proc) for name, proc in runs.items()}
    assert "processes        2" in outputs["ddp"] and "processes        2" in outputs["fsdp"]
    assert "--- sample after training ---\nROMEO:" in outputs["fsdp"]  # generated on the sharded model
    ddp, fsdp = adapter(tmp_path, "ddp"), adapter(tmp_path, "fsdp")
    assert ddp and any(v.abs().sum() > 0 for k, v in ddp.items() if "lora_B" in k)  # B starts at zero
    assert fsdp.keys() == ddp.keys()
    for key, value in ddp.items():
        torch.testing.assert_close(fsdp[key], value, rtol=0, atol=1e-5, msg=key)
    exported = {p.name for p in (tmp_path / "fsdp" / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= exported

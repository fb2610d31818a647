"""CUDA checks of the APT model and trainer. They skip without a GPU; bench/gpu_check.sh runs them on one."""

import pytest
import torch

from apt_plugin_lm.model import APTConfig, APTLargeModel
from conftest import cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MODES = ["autopoietic", "sdpa"]


def model(mode):
    torch.manual_seed(0)
    m = APTLargeModel(APTConfig(vocab_size=100, d_model=128, num_heads=4, num_layers=2, max_seq_len=128,
                                attention=mode)).cuda()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.0)
    return m


@pytest.mark.parametrize("mode", MODES)
def test_causal_on_cuda_in_bf16(mode):
    m = model(mode).eval()
    ids = torch.randint(4, 100, (4, 96), device="cuda")
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 70:] = False
    with torch.autocast("cuda", dtype=torch.bfloat16):
        base = m(ids, attention_mask=mask).float()
        for t in (0, 31, 63, 90):
            edited = ids.clone()
            edited[:, t + 1] = (edited[:, t + 1] + 5) % 100
            out = m(edited, attention_mask=mask).float()
            # exact, as on CPU: a future token's change reaches no earlier row (masked scores are exact
            # zeros after softmax, and each row's projections and attention read only its own inputs)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=0, rtol=0)
            assert (out[0, t + 1:] - base[0, t + 1:]).abs().max() > 1e-2


@pytest.mark.parametrize("mode", MODES)
def test_bf16_training_steps_are_finite_on_cuda(mode):
    m = model(mode).train()
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
    ids = torch.randint(0, 100, (8, 129), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_pipeline_trains_on_cuda_in_bf16(tiny_pipeline):
    result = cli("run", str(tiny_pipeline), "--no-progress", "--set", "trainer.device=cuda",
                 "--set", "trainer.precision=bf16", "--set", "trainer.max_steps=20")
    assert result.returncode == 0, result.stderr
    assert "val loss" in result.stdout


GPU_PIPELINE = """
[pipeline]
name = "gpu"
seed = 0
output_dir = "{out}"

[data]
use = "text"
corpus = "python-stdlib-docs"
max_chars = 40000
block_size = 64
batch_size = 16

[model]
use = "apt-lm"
d_model = 64
num_heads = 2
num_layers = 2
d_ff = 128

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
device = "cuda"
precision = "fp16"
max_steps = 30
accumulate_grad_batches = 2
log_every = 10
export = false
eval_batches = 2
"""


def test_fp16_with_grad_scaler_trains_and_the_scaler_survives_a_checkpoint(tmp_path):
    path = tmp_path / "gpu.toml"
    path.write_text(GPU_PIPELINE.format(out=tmp_path / "run"))
    result = cli("run", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "MFU" in result.stdout  # logged on CUDA at the logging interval
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=True)
    scaler = state["scaler_state_dict"]
    assert scaler and scaler["scale"] > 0 and "_growth_tracker" in scaler
    resumed = cli("run", str(path), "--no-progress", "--resume", "latest", "--set", "trainer.max_steps=40",
                  "--set", "trainer.epochs=5")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr


def test_a_nan_step_is_skipped_on_cuda_without_changing_parameters(tmp_path):
    from test_training import run_with_nan_step

    for precision in ("bf16", "fp16"):
        probe, _, _ = run_with_nan_step(tmp_path / precision, trainer={"device": "cuda", "precision": precision,
                                                                       "learning_rate": 1e-2})
        for name, value in probe.params[3].items():
            assert torch.equal(value, probe.params[2][name]), (precision, name)


def test_compiled_model_trains_on_cuda(tiny_pipeline):
    result = cli("run", str(tiny_pipeline), "--no-progress", "--set", "trainer.device=cuda",
                 "--set", "trainer.compile=true", "--set", "trainer.max_steps=10")
    assert result.returncode == 0, result.stderr

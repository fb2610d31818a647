"""CUDA checks of the APT model and trainer. They skip without a GPU; bench/gpu_check.sh runs them on one."""

import pytest
import torch

from apt_kernel.runner import run_pipeline
from apt_plugin_lm.model import APTConfig, APTLargeModel
from apt_sdk import hookimpl
from apt_sdk.testing import IsolatedKernel
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


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_causal_on_cuda_in_bf16(mode, padded):
    m = model(mode).eval()
    ids = torch.randint(4, 100, (4, 96), device="cuda")
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 70:] = False
    mask = mask if padded else None  # unpadded SDPA runs the is_causal (flash) kernel
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
    assert "peak GPU memory" in result.stdout


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
    from apt_plugin_lm.testing_runs import run_with_nan_step

    for precision in ("bf16", "fp16"):
        probe, _, _ = run_with_nan_step(tmp_path / precision, trainer={"device": "cuda", "precision": precision,
                                                                       "learning_rate": 1e-2})
        for name, value in probe.params[3].items():
            assert torch.equal(value, probe.params[2][name]), (precision, name)


def test_compiled_model_trains_on_cuda(tiny_pipeline):
    result = cli("run", str(tiny_pipeline), "--no-progress", "--set", "trainer.device=cuda",
                 "--set", "trainer.compile=true", "--set", "trainer.max_steps=10")
    assert result.returncode == 0, result.stderr


class SyncGuard:
    """From step 2 to the last, any call that makes the host wait for the GPU raises."""

    MANIFEST = {"kernel_api": "^1.0", "provides": {"callback": {"no-host-sync": {}}}}

    def __init__(self, last: int):
        self.last, self.guarded = last, []

    @hookimpl
    def register_callbacks(self, register):
        register("no-host-sync", lambda options, context: self)

    def __getattr__(self, name):  # every other event: nothing to do
        return lambda *args: None

    def on_train_batch_end(self, trainer, step, metrics):
        torch.cuda.set_sync_debug_mode("error" if 2 <= step < self.last else "default")
        self.guarded.append(step)

    def on_exception(self, trainer, error):
        torch.cuda.set_sync_debug_mode("default")

    def state_dict(self):
        return {}


@pytest.mark.parametrize("mode", MODES)
def test_a_training_step_on_cuda_never_waits_for_the_device(tmp_path, mode):
    """Batches go to the GPU from pinned memory, losses are read back once per logging interval: between
    logs nothing synchronises, so the host runs ahead and queues the next step while this one computes."""
    guard = SyncGuard(last=8)
    kernel = IsolatedKernel()
    kernel.add(guard, SyncGuard.MANIFEST, name="sync")
    try:
        run_pipeline({
            "pipeline": {"name": "sync", "output_dir": str(tmp_path / "run")},
            "data": {"use": "text", "corpus": "python-stdlib-docs", "max_chars": 40000, "block_size": 64,
                     "batch_size": 16},
            "model": {"use": "apt-lm", "d_model": 64, "num_heads": 2, "num_layers": 2, "d_ff": 128,
                      "attention": mode},
            "loss": {"use": "lm-cross-entropy"},
            "trainer": {"use": "apt-trainer", "device": "cuda", "precision": "bf16", "max_steps": 8,
                        "log_every": 0, "eval_every": 0, "save_checkpoints": False, "temp_checkpoint_freq": 0,
                        "export": False},
            "callbacks": [{"use": "no-host-sync"}]}, kernel=kernel)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.guarded == list(range(1, 9))


def test_batches_go_to_the_gpu_from_pinned_memory(monkeypatch):
    from apt_plugin_trainer.distributed import to_device

    pinned = []
    real = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(1) or real(self, *a, **k))
    batch = torch.arange(12).view(3, 4)
    moved = to_device(batch, torch.device("cuda"))
    assert pinned == [1] and moved.is_cuda and torch.equal(moved.cpu(), batch)
    already = real(batch)
    to_device(already, torch.device("cuda"))
    assert pinned == [1]  # a data module that pins its own batches is not pinned twice

"""The trainer's numbers: tokens per second over each logging interval (not since the start), and MFU from
the model's own FLOPs per token, per device."""

import time

import pytest
import torch

from apt_sdk import Callback, hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel


def test_logged_throughput_is_per_interval_not_since_the_start(tiny_pipeline):
    """A slow first step (compile time, say) must not dilute later throughput figures."""

    class SlowFirstStep(Callback):
        def __init__(self):
            self.seen = []  # (step, logged tokens/s, time, tokens so far)

        def on_train_batch_end(self, trainer, step, metrics):
            if step == 1:
                time.sleep(1.5)
            self.seen.append((step, trainer.metrics.get("tokens_per_s"), time.perf_counter(), trainer.step))

    callback = SlowFirstStep()

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("slow", lambda options, context: callback)

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"slow": {}}}}, name="slow-plugin")
    text = tiny_pipeline.read_text().replace("max_steps = 4", "max_steps = 8").replace("log_every = 0", "log_every = 2")
    result, _ = run_pipeline(text + '\n[[callbacks]]\nuse = "slow"\n', kernel=kernel)
    rates = {step: rate for step, rate, _, _ in callback.seen}
    tokens_per_step = result["tokens"] / 8
    times = {step: when for step, _, when, _ in callback.seen}
    # the rate logged at step 8 covers steps 7-8 only, as measured from outside
    expected = 2 * tokens_per_step / (times[8] - times[6])
    assert rates[8] == pytest.approx(expected, rel=0.5)
    assert rates[8] > 5 * rates[2]  # step 2's interval holds the slow step; a since-the-start mean would be ~4x


def test_mfu_comes_from_the_model_or_is_left_out():
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_trainer.progress import mfu

    no_flops = torch.nn.Linear(2, 2)  # no config, no flops_per_token: no MFU, no crash
    assert mfu(no_flops, torch.device("cuda"), 1e5, 64, 1) is None
    assert mfu(no_flops, torch.device("cpu"), 1e5, 64, 1) is None
    model = APTLargeModel(APTConfig(vocab_size=100, d_model=32, num_heads=2, num_layers=3, d_ff=64, max_seq_len=64))
    weights = sum(p.numel() for p in model.parameters()) - 64 * 32
    assert model.flops_per_token(64) == 6 * weights + 12 * 3 * 32 * 64


def test_mfu_is_per_device(monkeypatch):
    """The trainer's token rate is global (summed over ranks): MFU divides it over every device's peak.
    (The first version multiplied it by the world size instead.)"""
    from apt_plugin_trainer.progress import PEAK_BF16_FLOPS, mfu

    class Model:
        def flops_per_token(self, seq_len: int) -> float:
            return 1e9 * seq_len

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    one = mfu(Model(), torch.device("cuda"), 1e5, 64, 1)
    assert one == pytest.approx(1e5 * 64e9 / PEAK_BF16_FLOPS["H200"])
    assert mfu(Model(), torch.device("cuda"), 1e5, 64, 2) == pytest.approx(one / 2)

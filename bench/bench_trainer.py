"""The trainer's cost over a raw PyTorch loop, and a checkpoint save's cost over torch.save + fsync.

1. Step time: `apt-trainer` (with the default callbacks of quickstart: none per step) against a plain
   loop written here: same model, same batches, same AdamW settings, same token-normalised loss. The two
   alternate within each round; the ratio is the median over rounds of per-round median step times.
2. Checkpoint save: CheckpointManager.save_checkpoint (atomic temp file + fsync + rename + hash +
   metadata.json) against torch.save of the same state into a file + fsync.

    python bench/bench_trainer.py [--rounds 7] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from apt_kernel.runner import run_pipeline
from apt_plugin_trainer.checkpoint import CheckpointManager
from apt_plugin_trainer.optim import param_groups

PIPELINE = {
    "pipeline": {"name": "bench", "seed": 0},
    "data": {"use": "text", "corpus": "python-stdlib-docs", "max_chars": 200_000, "block_size": 64, "batch_size": 16},
    "model": {"use": "apt-lm", "d_model": 128, "num_heads": 4, "num_layers": 2, "d_ff": 512},
    "loss": {"use": "lm-cross-entropy"},
    "trainer": {"use": "apt-trainer", "log_every": 50, "export": False, "save_checkpoints": False,
                "temp_checkpoint_freq": 0, "eval_batches": 1, "warmup_steps": 0},
}


class StepTimer:
    """Times optimizer steps inside the trainer, from one on_train_batch_end to the next."""

    def __init__(self):
        self.times, self.last = [], None

    def __getattr__(self, name):
        return lambda *args: None

    def on_train_batch_end(self, trainer, step, metrics):
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now

    def state_dict(self):
        return {}


def trainer_steps(steps: int, out: Path, callbacks: list[dict] | None = None) -> tuple[float, object]:
    from apt_sdk import hookimpl
    from apt_sdk.testing import IsolatedKernel

    timer = StepTimer()

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("step-timer", lambda options, context: timer)

    kernel = IsolatedKernel()
    kernel.add(Plugin(), {"kernel_api": "^1.0", "provides": {"callback": {"step-timer": {}}}}, name="timer")
    pipeline = {**PIPELINE, "pipeline": {**PIPELINE["pipeline"], "output_dir": str(out)},
                "trainer": {**PIPELINE["trainer"], "max_steps": steps},
                "callbacks": [*(callbacks or []), {"use": "step-timer"}]}
    _, context = run_pipeline(pipeline, kernel=kernel)
    context.step_times = timer.times[2:]  # for callers that need more than the median
    return statistics.median(timer.times[2:]), context


def raw_steps(context, steps: int) -> float:
    """The loop a user would write by hand, on the trainer's model and data."""
    model, data, loss_fn = context.model, context.data, context.loss
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)
    times, batches = [], data.train_batches(0)
    model.train()
    for _ in range(steps):
        start = time.perf_counter()  # fetching the batch is part of a step, as in the trainer
        batch = next(batches)
        logits = model(input_ids=batch["input_ids"])
        loss_sum, count = loss_fn(logits, batch)
        (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def checkpoint_ratio(context, repeats: int) -> tuple[float, float]:
    model = context.model
    optimizer = torch.optim.AdamW(model.parameters())
    model(input_ids=next(context.data.train_batches(0))["input_ids"]).sum().backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as tmp:
        manager = CheckpointManager(tmp)
        ours, raw = [], []
        for i in range(repeats):
            start = time.perf_counter()
            manager.save_checkpoint(model, optimizer, None, i, i, [1.0] * 1000, {"val_loss": 1.0})
            ours.append(time.perf_counter() - start)
            state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                     "loss_history": [1.0] * 1000}
            start = time.perf_counter()
            with open(Path(tmp) / f"raw{i}.pt", "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            raw.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(raw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    ratios, trainer_times, raw_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            t_trainer, context = trainer_steps(args.steps, Path(tmp) / f"r{r}")
            t_raw = raw_steps(context, args.steps)
            ratios.append(t_trainer / t_raw)
            trainer_times.append(t_trainer)
            raw_times.append(t_raw)
        ours, raw = checkpoint_ratio(context, repeats=9)
    print(f"torch threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps, batch 16 x 64 tokens")
    print(f"trainer step   median {statistics.median(trainer_times) * 1000:8.2f} ms")
    print(f"raw loop step  median {statistics.median(raw_times) * 1000:8.2f} ms")
    print(f"trainer / raw loop: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"checkpoint save {ours * 1000:.1f} ms vs torch.save+fsync {raw * 1000:.1f} ms: ratio {ours / raw:.2f}")


if __name__ == "__main__":
    main()

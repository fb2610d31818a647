"""Tiny APT language-model runs for the tests of the plugins that take part in training (the trainer, the error
log, the gradient monitor): ``PaddedSequences``, variable-length sequences padded per micro-batch (under DDP
rank r reads rows r, r+W, ... of every global batch, so ranks see different numbers of real tokens), and
``run_with_nan_step``, a run whose third step has NaN gradients. A run needs a trainer (``apt-trainer``)
installed beside this plugin."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from apt_sdk import hookimpl, run_pipeline
from apt_sdk.testing import IsolatedKernel

LENGTHS = [3, 17, 8, 30, 5, 22, 12, 9, 27, 4, 15, 6, 19, 11, 25, 7, 2, 14, 29, 10,
           16, 5, 21, 8, 13, 26, 3, 18, 9, 24, 6, 12, 28, 4, 20, 7, 15, 10, 23, 11]


class PaddedSequences:
    """A data module of 40 fixed sequences in a fixed order, ``batch_size`` per process and step."""

    block_size = 31

    def __init__(self, batch_size: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.seqs = [torch.randint(4, 50, (n + 1,), generator=g) for n in LENGTHS]
        self.batch_size, self.rank, self.world_size = batch_size, 0, 1
        self.tokenizer = types.SimpleNamespace(vocab_size=50, pad_id=0, bos_id=1, eos_id=2,
                                               save=lambda directory: None)

    def configure_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return len(self.seqs) // (self.batch_size * self.world_size)

    def train_batches(self, epoch: int, start: int = 0):
        size = self.batch_size * self.world_size
        for i in range(start, self.steps_per_epoch()):
            rows = self.seqs[i * size:(i + 1) * size][self.rank::self.world_size]
            width = max(len(r) for r in rows) - 1
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            labels = torch.full((len(rows), width), -100)
            for j, row in enumerate(rows):
                ids[j, :len(row) - 1], labels[j, :len(row) - 1] = row[:-1], row[1:]
            yield {"input_ids": ids, "attention_mask": labels != -100, "labels": labels}

    def val_batches(self):
        return iter(())


class NaNOnce:
    """Cross-entropy whose gradient is NaN on one chosen micro-batch."""

    def __init__(self, at_call: int) -> None:
        self.calls, self.at_call = 0, at_call

    def __call__(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        labels = batch["labels"]
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        if self.calls == self.at_call:
            total = total * torch.tensor(float("nan"))
        return total, (labels != -100).sum()


class NaNProbe:
    """An in-process plugin: padded data, a loss whose gradient is NaN on the third micro-batch, a callback
    keeping each step's weights (``params``) and the optimizer, and every error the kernel reports (``errors``)."""

    MANIFEST = {"kernel_api": "^1.0", "provides": {"data": {"padded": {}}, "loss": {"nan-once": {}},
                                                   "callback": {"snapshots": {}}}}

    def __init__(self) -> None:
        self.errors: list[dict] = []
        self.params: dict[int, dict] = {}
        self.optimizer: Any = None

    @hookimpl
    def register_data(self, register):
        register("padded", lambda options, context: PaddedSequences(8))

    @hookimpl
    def register_losses(self, register):
        register("nan-once", lambda options, context: NaNOnce(at_call=3))

    @hookimpl
    def register_callbacks(self, register):
        register("snapshots", lambda options, context: _Snapshots(self))

    @hookimpl
    def error_reported(self, error):
        self.errors.append(error)


class _Snapshots:
    def __init__(self, probe: NaNProbe) -> None:
        self.probe = probe

    def on_fit_start(self, trainer) -> None:
        self.probe.optimizer = trainer.optimizer

    def on_train_batch_end(self, trainer, step, metrics) -> None:
        self.probe.params[step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def state_dict(self) -> dict:
        return {}


def run_with_nan_step(output_dir: str | Path, trainer: dict | None = None,
                      callbacks: tuple | list = ()) -> tuple[NaNProbe, dict, Any]:
    """Train 5 steps of a tiny model whose step 3 has NaN gradients, with ``trainer`` options and ``callbacks``
    (tables, as in a pipeline) added; returns (probe, result, context)."""
    probe = NaNProbe()
    kernel = IsolatedKernel()
    kernel.add(probe, NaNProbe.MANIFEST, name="nan")
    result, context = run_pipeline({
        "pipeline": {"name": "nan", "output_dir": str(output_dir)},
        "data": {"use": "padded"},
        "model": {"use": "apt-lm", "d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64},
        "loss": {"use": "nan-once"},
        "trainer": {"use": "apt-trainer", "export": False, "save_checkpoints": False, "log_every": 1,
                    **(trainer or {})},
        "callbacks": [*callbacks, {"use": "snapshots"}]}, kernel=kernel)
    return probe, result, context

"""What the run shows while it trains: a progress bar, throughput per logging interval, and MFU."""

from __future__ import annotations

import time
from typing import Any

import torch

# dense bf16 peak FLOP/s per device, for MFU; matched by substring of the device name
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


class Throughput:
    """Tokens per second over the last logging interval: compile time and earlier slow steps do not
    dilute it, as a since-the-start average would."""

    def __init__(self, tokens: float = 0.0) -> None:
        self.last_time, self.last_tokens = time.perf_counter(), tokens

    def interval(self, tokens: float) -> float:
        now = time.perf_counter()
        rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_tokens = now, tokens
        return rate


def mfu(model: Any, device: torch.device, tokens_per_s: float, seq_len: int | None, world_size: int) -> float | None:
    """Model FLOPs utilisation per device, from the model's own ``flops_per_token(seq_len)``; None where the
    model does not say its FLOPs, the device's peak is unknown, or it is not a GPU."""
    flops_per_token = getattr(model, "flops_per_token", None)
    if device.type != "cuda" or not callable(flops_per_token) or not seq_len:
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    return tokens_per_s * float(flops_per_token(seq_len)) / (peak * world_size)


class ProgressBar:
    """A rich progress bar with loss, tokens/s and ETA; plain log lines when not on a terminal."""

    def __init__(self, enabled: bool, total: int, done: int, log) -> None:
        self.log, self.bar, self.enabled = log, None, enabled
        if enabled:
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                           TextColumn("step {task.completed}/{task.total}"),
                           TextColumn("loss {task.fields[loss]:.4f}"),
                           TextColumn("{task.fields[rate]:,.0f} tok/s"), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), rate=0.0,
                                          epoch=0)
            self.bar.start()

    def update(self, step: int, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch)

    def interval(self, epoch: int, step: int, loss: float, rate: float, mfu_value: float | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, loss=loss, rate=rate)
            return
        extra = f", MFU {mfu_value:.1%}" if mfu_value is not None else ""
        self.log(f"epoch {epoch} step {step}: loss {loss:.4f}, {rate:,.0f} tok/s{extra}")

    def note(self, message: str) -> None:
        (self.bar.console.print if self.bar is not None else self.log)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

"""The training loop: AdamW, warmup + cosine schedule, gradient clipping, validation, checkpoints,
callbacks. Model, data and loss come from the pipeline's other components; nothing here is
specific to the APT model.

Contract with the other components: ``data.train_batches(epoch)`` / ``data.val_batches()`` yield
dicts of tensors; the model is called with every key but ``labels``; ``loss(outputs, batch)``
returns ``(sum, count)`` and the step's loss is sum / count.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from apt_sdk import BuildContext, UserError

from .checkpoint import CheckpointManager


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"[trainer] device = {name!r} but no CUDA device is available")
    return torch.device(name)


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norms, gates and temperatures keep their scale."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, options: dict, context: BuildContext) -> None:
        self.o = options
        self.context = context
        self.log = context.log
        self.device = pick_device(options["device"])
        self.should_stop = False
        self.global_step = 0
        self.epoch = 0
        self.loss_history: list[float] = []
        self.best_val: float | None = None

    # the objects callbacks look at
    @property
    def model(self):
        return self.context.model

    @property
    def data(self):
        return self.context.data

    def _call(self, event: str, *args) -> None:
        for callback in self.context.callbacks:
            getattr(callback, event)(self, *args)

    def _autocast(self):
        if self.o["precision"] == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with self._autocast():
            outputs = self.model(**inputs)
        return self.context.loss(outputs, batch)

    @torch.no_grad()
    def validate(self) -> float | None:
        self.model.eval()
        total, count = 0.0, 0
        for i, batch in enumerate(self.data.val_batches()):
            if self.o["eval_batches"] and i >= self.o["eval_batches"]:
                break
            loss_sum, n = self._forward_loss(batch)
            total, count = total + float(loss_sum), count + int(n)
        self.model.train()
        return total / count if count else None

    def fit(self, context: BuildContext) -> dict:
        o, model, data = self.o, context.model.to(self.device), context.data
        steps_per_epoch = data.steps_per_epoch(0)
        total_steps = o["max_steps"] or o["epochs"] * steps_per_epoch
        optimizer = torch.optim.AdamW(param_groups(model, o["weight_decay"]), lr=o["learning_rate"],
                                      betas=(0.9, 0.95))
        warmup = o["warmup_steps"] if o["warmup_steps"] >= 0 else min(100, total_steps // 10)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total_steps, o["min_lr_ratio"]))
        manager = CheckpointManager(o["checkpoint_dir"] or context.run_dir, keep_last=o["keep_last"])
        tokenizer = getattr(data, "tokenizer", None)
        config = getattr(model, "config", None)
        start_epoch = 0
        if o["resume_from"]:
            path = manager.resolve(o["resume_from"])
            epoch, self.global_step, self.loss_history, metrics = manager.load_checkpoint(
                model, optimizer, scheduler, checkpoint_path=path)
            start_epoch, self.best_val = epoch + 1, metrics.get("best_val_loss", metrics.get("val_loss"))
            self.log(f"resumed from {path} (epoch {epoch}, step {self.global_step})")
        started, tokens, last_path, val_loss = time.perf_counter(), 0, None, None
        deadline = started + o["max_time_minutes"] * 60 if o["max_time_minutes"] else None
        model.train()
        self._call("on_fit_start")
        progress = _Progress(self.context.progress, total_steps, self.global_step, self.log, o["log_every"])
        try:
            for epoch in range(start_epoch, o["epochs"]):
                self.epoch = epoch
                self._call("on_epoch_start", epoch)
                for batch in data.train_batches(epoch):
                    loss_sum, count = self._forward_loss(batch)
                    loss = loss_sum / count.clamp(min=1)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if o["grad_clip"] > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
                    optimizer.step()
                    scheduler.step()
                    self.global_step += 1
                    value = loss.item()
                    self.loss_history.append(value)
                    tokens += int(count)
                    rate = tokens / max(time.perf_counter() - started, 1e-9)
                    metrics = {"loss": value, "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate}
                    progress.update(self.global_step, value, rate, epoch)
                    self._call("on_train_batch_end", self.global_step, metrics)
                    if o["eval_every"] and self.global_step % o["eval_every"] == 0:
                        val_loss = self._validation(progress)
                    if (o["max_steps"] and self.global_step >= o["max_steps"]) or \
                            (deadline and time.perf_counter() >= deadline):
                        self.should_stop = True
                    if self.should_stop:
                        break
                if not (o["eval_every"] and self.global_step % o["eval_every"] == 0):
                    val_loss = self._validation(progress)  # else it just ran at this step
                metrics = {"train_loss": self._recent_loss()}
                if val_loss is not None:
                    metrics["val_loss"] = val_loss
                is_best = val_loss is not None and (self.best_val is None or val_loss < self.best_val)
                if is_best:
                    self.best_val = val_loss
                if self.best_val is not None:
                    metrics["best_val_loss"] = self.best_val
                if o["save_every_epoch"]:
                    last_path = manager.save_checkpoint(model, optimizer, scheduler, epoch, self.global_step,
                                                        self.loss_history, metrics, tokenizer, config, is_best)
                    self._call("on_checkpoint_saved", str(last_path))
                self._call("on_epoch_end", epoch, metrics)
                if self.should_stop:
                    break
        except BaseException as exc:
            progress.close()
            self._call("on_exception", exc)
            raise
        progress.close()
        result = {
            "train_loss": self._recent_loss(), "val_loss": val_loss, "best_val_loss": self.best_val,
            "unigram_entropy": getattr(data, "unigram_entropy", None), "steps": self.global_step,
            "epochs": self.epoch + 1, "tokens": tokens, "seconds": round(time.perf_counter() - started, 1),
            "checkpoint": str(last_path) if last_path else None, "loss_history": list(self.loss_history),
        }
        if o["export"]:
            result["export_dir"] = str(self._export(context.run_dir / "model", tokenizer))
        self._call("on_fit_end", result)
        return result

    def _validation(self, progress) -> float | None:
        val_loss = self.validate()
        if val_loss is not None:
            progress.note(f"step {self.global_step}: val loss {val_loss:.4f}")
            self._call("on_validation_end", {"val_loss": val_loss, "step": self.global_step})
        return val_loss

    def _recent_loss(self) -> float | None:
        recent = self.loss_history[-20:]
        return sum(recent) / len(recent) if recent else None

    def _export(self, directory: Path, tokenizer: Any) -> Path:
        if hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_model

            save_model(self.model, str(directory / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save(directory / "tokenizer")
        return directory


class _Progress:
    """A rich progress bar with loss, tokens/s and ETA; plain log lines when not on a terminal."""

    def __init__(self, enabled: bool, total: int, done: int, log, log_every: int) -> None:
        self.log, self.log_every, self.bar = log, log_every, None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                TextColumn("step {task.completed}/{task.total}"),
                                TextColumn("loss {task.fields[loss]:.4f}"),
                                TextColumn("{task.fields[rate]:,.0f} tok/s"), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), rate=0.0,
                                          epoch=0)
            self.bar.start()

    def update(self, step: int, loss: float, rate: float, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, rate=rate, epoch=epoch)
        elif self.log_every and step % self.log_every == 0:
            self.log(f"epoch {epoch} step {step}: loss {loss:.4f}, {rate:,.0f} tok/s")

    def note(self, message: str) -> None:
        (self.bar.console.print if self.bar is not None else self.log)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

"""The training loop: AdamW, warmup + cosine schedule, gradient accumulation normalised by real tokens,
clipping, mixed precision, validation, checkpoints you can resume from exactly, callbacks, and DDP
under torchrun. Model, data and loss come from the pipeline's other components.

Contract with the other components: ``data.train_batches(epoch, start)`` / ``data.val_batches()``
yield dicts of tensors (optionally ``data.configure_distributed(rank, world_size)``); the model is
called with every key but ``labels``; ``loss(outputs, batch)`` returns ``(sum, count)``.

What makes it trustworthy, and why:
- The loss of an optimizer step is sum / count over every micro-batch of the window and every rank
  (never a mean of per-batch means): gradients of the sums are accumulated and divided once by the
  global token count.
- A step with inf/NaN gradients is skipped on the device (fused AdamW reads ``found_inf``), so the
  loop needs no host sync per step; skipped steps and losses are read back at the logging interval.
- A checkpoint holds the whole state, including the position inside the epoch and every rank's RNG
  states, so a resumed run continues exactly where the killed one was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from apt_plugin_errors.distributed import DistributedError, DistributedErrorHandler
from apt_sdk import BuildContext, RunInterrupted, UserError

from .checkpoint import CheckpointManager

# dense bf16 peak FLOP/s, for MFU; matched by substring of the device name
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"[trainer] device = {name!r} but no CUDA device is available")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
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


def rng_state() -> dict:
    """This process's RNG states as checkpoint-safe values (tensors, ints, tuples)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def shard_model(model: torch.nn.Module) -> None:
    """FSDP2: shard every block of the model's layer lists, then the rest, across all ranks."""
    from torch.distributed.fsdp import fully_shard

    for child in model.modules():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block)
    fully_shard(model)


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Load an optimizer state saved plain (keyed by index) or by FSDP (keyed by parameter name)."""
    if any(isinstance(key, str) for key in state.get("state", {})):
        set_optimizer_state_dict(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)


class Distributed:
    """The process group under torchrun (RANK/WORLD_SIZE set), or a single process."""

    def __init__(self, device_option: str) -> None:
        self.rank, self.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = pick_device(device_option, self.local_rank)
        self.started_group = False
        # under torchrun (RANK set) the group exists even for one process: FSDP needs it
        if "RANK" in os.environ and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)
            self.started_group = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.started_group:
            dist.destroy_process_group()


class Trainer:
    def __init__(self, options: dict, context: BuildContext) -> None:
        self.o = options
        self.context = context
        self.log = context.log
        self.should_stop = False
        self.skip_next_step = False  # set by a callback in on_before_optimizer_step
        self.global_step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already trained on
        self.loss_history: list[float] = []
        self.best_val: float | None = None
        self.last_metrics: dict = {}
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, skipped) on device
        self._signal: int | None = None
        self.dist: Distributed | None = None

    # the objects callbacks look at
    @property
    def model(self):
        return self.context.model

    @property
    def data(self):
        return self.context.data

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    def _call(self, event: str, *args) -> None:
        for callback in self.context.callbacks:
            getattr(callback, event)(self, *args)

    def _autocast(self):
        precision = self.o["precision"]
        if precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _forward_loss(self, module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with self._autocast():
            outputs = module(**{k: v for k, v in batch.items() if k != "labels"})
        loss_sum, count = self.context.loss(outputs, batch)
        return loss_sum.float(), count

    # -- set-up ----------------------------------------------------------------------------------
    def _setup(self, context: BuildContext) -> None:
        o = self.o
        self.dist = Distributed(o["device"])
        self.device = self.dist.device
        self.errors = DistributedErrorHandler(self.device)  # a failing rank must not leave the others hanging
        if o["deterministic"]:
            torch.use_deterministic_algorithms(True)
        if o["precision"] == "fp16" and self.device.type != "cuda":
            raise UserError("[trainer] precision = \"fp16\" needs CUDA (GradScaler); use \"bf16\" on CPU")
        model = context.model.to(self.device)
        if hasattr(context.data, "configure_distributed"):
            context.data.configure_distributed(self.dist.rank, self.dist.world_size)
        self.fsdp = o["strategy"] == "fsdp"
        if self.fsdp:
            if not dist.is_initialized():
                raise UserError("[trainer] strategy = \"fsdp\" runs under torchrun: add --nproc-per-node N")
            shard_model(model)
            self.train_module = model
        else:
            self.train_module = torch.compile(model) if o["compile"] else model
            if self.dist.enabled:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.train_module = torch.nn.parallel.DistributedDataParallel(self.train_module, device_ids=ids)
        # fused AdamW skips a step on the device when told found_inf: no host sync to check gradients;
        # sharded (DTensor) parameters take the foreach kernels and a host-side check instead
        self.optimizer = torch.optim.AdamW(param_groups(model, o["weight_decay"]), lr=o["learning_rate"],
                                           betas=(0.9, 0.95), fused=not self.fsdp, foreach=self.fsdp or None)
        self.steps_per_epoch = math.ceil(context.data.steps_per_epoch(0) / o["accumulate_grad_batches"])
        self.total_steps = o["max_steps"] or o["epochs"] * self.steps_per_epoch
        warmup = o["warmup_steps"] if o["warmup_steps"] >= 0 else min(100, self.total_steps // 10)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(warmup, self.total_steps, o["min_lr_ratio"]))
        self.scaler = torch.amp.GradScaler("cuda") if o["precision"] == "fp16" else None
        self.manager = CheckpointManager(o["checkpoint_dir"] or context.run_dir, keep_last=o["keep_last"],
                                         rank=self.dist.rank)
        self.params = [p for p in model.parameters() if p.requires_grad]
        config = json.dumps(context.config, sort_keys=True, default=str)
        self.pipeline_hash = hashlib.sha256(config.encode()).hexdigest()

    # -- checkpoint state ------------------------------------------------------------------------
    def _model_and_optimizer_state(self) -> tuple[dict, dict]:
        if not self.fsdp:
            return self.context.model.state_dict(), self.optimizer.state_dict()
        # gathered whole on rank 0 (a collective: every rank calls it); optimizer state keyed by name
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.context.model, options=options),
                get_optimizer_state_dict(self.context.model, self.optimizer, options=options))

    def _state(self, epoch_complete: bool) -> dict:
        self._flush()
        model = self.context.model
        model_state, optimizer_state = self._model_and_optimizer_state()
        return {
            "model_state_dict": model_state,
            "optimizer_state_dict": optimizer_state,
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "loss_history": list(self.loss_history),
            "metrics": {k: float(v) for k, v in self.last_metrics.items()},
            "position": {"epoch": self.epoch, "batches_done": self.batches_done, "epoch_complete": epoch_complete},
            "best_val": self.best_val,
            "callbacks": [{"class": type(c).__name__, "state": c.state_dict()} for c in self.context.callbacks],
            "rng": self.dist.gather(rng_state()),  # every rank's, indexed by rank
            "world_size": self.dist.world_size,
            "config": model.config.to_dict() if hasattr(model, "config") else None,
            "pipeline": self.context.config,
            "pipeline_hash": self.pipeline_hash,
        }

    def _save(self, epoch_complete: bool, is_best: bool = False) -> Path:
        state = self._state(epoch_complete)
        tokenizer = getattr(self.data, "tokenizer", None)
        extra = {k: v for k, v in state.items() if k not in (
            "scheduler_state_dict", "epoch", "global_step", "loss_history", "metrics", "config")}
        return self.manager.save_checkpoint(self.context.model, self.optimizer, self.scheduler, self.epoch,
                                            self.global_step, self.loss_history, state["metrics"], tokenizer,
                                            state["config"], is_best, extra=extra)

    def _save_temp(self) -> Path:
        return self.manager.save_temp(self._state(epoch_complete=False))

    def _resume(self, spec: str) -> tuple[int, int]:
        path = self.manager.resolve(spec)
        state = self.manager.read(path)
        if self.fsdp:
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(self.context.model, state["model_state_dict"], options=options)
            set_optimizer_state_dict(self.context.model, self.optimizer, state["optimizer_state_dict"], options=options)
        else:
            self.context.model.load_state_dict(state["model_state_dict"])
            load_optimizer_state(self.context.model, self.optimizer, state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        if self.scaler is not None and state.get("scaler_state_dict"):
            self.scaler.load_state_dict(state["scaler_state_dict"])
        self.global_step, self.loss_history = state["global_step"], list(state["loss_history"])
        self.last_metrics = dict(state.get("metrics") or {})
        self.best_val = state.get("best_val", self.last_metrics.get("val_loss"))
        saved = state.get("callbacks") or []
        for callback, entry in zip(self.context.callbacks, saved, strict=False):
            if entry["class"] == type(callback).__name__:
                callback.load_state_dict(entry["state"])
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        elif rngs:
            self.log(f"note: {path} was written by {len(rngs)} processes, this run has {self.dist.world_size}: "
                     "random streams are not continued exactly")
        position = state.get("position") or {"epoch": state["epoch"], "batches_done": 0, "epoch_complete": True}
        if state.get("pipeline_hash") and state["pipeline_hash"] != self.pipeline_hash:
            self.log("note: the pipeline differs from the one that wrote the checkpoint")
        self.log(f"resumed from {path} (epoch {position['epoch']}, step {self.global_step})")
        if position["epoch_complete"]:
            return position["epoch"] + 1, 0
        return position["epoch"], position["batches_done"]

    # -- one optimizer step ----------------------------------------------------------------------
    def _train_step(self, window: list[dict], first_index: int) -> None:
        """One optimizer step. Every rank runs the same collectives even after a local error (it only
        skips its own work) and checks the error flag before each backward that synchronises: a rank
        that failed in data loading or forward is known to all before DDP/FSDP wait for its gradients."""
        module, count, step = self.train_module, torch.zeros((), device=self.device), self.global_step + 1
        loss_total = torch.zeros((), device=self.device)
        if not window:  # the data loader failed on this rank
            self.errors.check()
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            if self.fsdp:
                self.errors.check()  # FSDP forward all-gathers
                module.set_requires_gradient_sync(last)
            sync = nullcontext() if last or self.fsdp or not self.dist.enabled else module.no_sync()
            with sync:
                if not self.errors.failed:
                    with self.errors.capture(step):
                        loss_sum, n = self._forward_loss(module, batch)
                if last or self.fsdp:
                    self.errors.check()
                if not self.errors.failed:
                    with self.errors.capture(step):
                        (self.scaler.scale(loss_sum) if self.scaler else loss_sum).backward()
                        loss_total += loss_sum.detach()
                        count += n
                        self._call("on_micro_batch_end", self.epoch, first_index + i, batch)
        totals = self.dist.sum(torch.stack([loss_total, count.float()]))  # the window's global token count
        if self.errors.failed:
            return  # reported by the check at the end of this step
        with self.errors.capture(step):
            self._update(totals)

    def _update(self, totals: torch.Tensor) -> None:
        # DDP averaged the gradients over ranks; undo that and divide the sums by the global count
        factor = self.dist.world_size / totals[1].clamp(min=1)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, factor)
        clip = self.o["grad_clip"] if self.o["grad_clip"] > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self._call("on_before_optimizer_step", self.global_step + 1)  # gradients final: unscaled, clipped
        found_inf = (~torch.isfinite(norm)).float()
        if self.skip_next_step:  # a callback (e.g. the gradient monitor) asked to drop this update
            found_inf, self.skip_next_step = torch.ones_like(found_inf), False
        if self.fsdp:
            if not found_inf.item():  # FSDP: one host sync per step decides the skip
                self.optimizer.step()
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.found_inf = found_inf  # read by fused AdamW, as GradScaler does
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        self.tokens = self.tokens + totals[1]
        self._pending.append((self.global_step, totals[0] / totals[1].clamp(min=1), found_inf))

    def _flush(self) -> None:
        """Read the pending per-step losses back from the device: the one host sync per interval."""
        if not self._pending:
            return
        values = torch.stack([torch.stack([loss, skipped]) for _, loss, skipped in self._pending]).tolist()
        for (step, _, _), (loss, skipped) in zip(self._pending, values, strict=True):
            self.loss_history.append(loss)
            if skipped:
                report = {"type": "NonFiniteGradients", "severity": "warning", "global_step": step,
                          "epoch": self.epoch, "rank": self.dist.rank,
                          "message": f"step {step}: gradients were inf/NaN; the update was skipped"}
                self.log(f"warning: {report['message']}")
                self.context.report_error(report)
        self._pending.clear()

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        model = self.context.model
        model.eval()
        sums = torch.zeros(2, device=self.device)
        with self.errors.capture(self.global_step):
            for i, batch in enumerate(self.data.val_batches()):
                if self.o["eval_batches"] and i >= self.o["eval_batches"]:
                    break
                loss_sum, n = self._forward_loss(model, batch)
                sums += torch.stack([loss_sum, n.float()])
        model.train()
        self.errors.check()
        total, count = self.dist.sum(sums).tolist()
        return total / count if count else None

    def _validation(self) -> float | None:
        val_loss = self.validate()
        if val_loss is not None:
            self.last_metrics["val_loss"] = val_loss
            self.progress.note(f"step {self.global_step}: val loss {val_loss:.4f}")
            with self.errors.capture(self.global_step):
                self._call("on_validation_end", {"val_loss": val_loss, "step": self.global_step})
        return val_loss

    # -- the loop --------------------------------------------------------------------------------
    def _windows(self, epoch: int, start: int):
        """(first micro-batch index, list of micro-batches) per optimizer step of this epoch."""
        size, window, first = self.o["accumulate_grad_batches"], [], start
        for index, batch in enumerate(self.data.train_batches(epoch, start), start=start):
            window.append(batch)
            if len(window) == size:
                yield first, window
                window, first = [], index + 1
        if window:
            yield first, window

    def _guarded(self, windows):
        """The windows, with a loader error kept for the next check: this rank then trains on nothing."""
        iterator = iter(windows)
        while True:
            item = None
            with self.errors.capture(self.global_step + 1):
                item = next(iterator, None)
            if self.errors.failed:
                yield self.batches_done, []
                return
            if item is None:
                return
            yield item

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            self._signal = signum

        return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def fit(self, context: BuildContext) -> dict:
        o = self.o
        self._setup(context)
        start_epoch, start_batch = self._resume(o["resume_from"]) if o["resume_from"] else (0, 0)
        previous_handlers = self._install_signal_handlers()
        self.tokens = torch.zeros((), device=self.device)
        started = time.perf_counter()
        deadline = started + o["max_time_minutes"] * 60 if o["max_time_minutes"] else None
        context.model.train()
        self.progress = _Progress(context.progress, self.total_steps, self.global_step, self.log, o["log_every"])
        self._call("on_fit_start")
        val_loss, last_path, interrupted = self.last_metrics.get("val_loss"), None, None
        try:
            for epoch in range(start_epoch, o["epochs"]):
                self.epoch, self.batches_done = epoch, start_batch if epoch == start_epoch else 0
                self._call("on_epoch_start", epoch)
                for first, window in self._guarded(self._windows(epoch, self.batches_done)):
                    self._train_step(window, first)
                    if not self.errors.failed:
                        with self.errors.capture(self.global_step):
                            self._after_step(first + len(window), started)
                    if o["eval_every"] and self.global_step % o["eval_every"] == 0:
                        val_loss = self._validation()
                    if o["temp_checkpoint_freq"] and self.global_step % o["temp_checkpoint_freq"] == 0:
                        self._save_temp()
                    done = (o["max_steps"] and self.global_step >= o["max_steps"]) or \
                        (deadline is not None and time.perf_counter() >= deadline)
                    # one all-reduce per step: any rank failed / was signalled / wants to stop
                    signalled, stop = self.errors.check(self._signal is not None, bool(done or self.should_stop))
                    if signalled:
                        interrupted = self._signal or signal.SIGTERM
                        break
                    if stop:
                        self.should_stop = True
                        break
                if interrupted:
                    break
                epoch_complete = not self.should_stop
                if not (o["eval_every"] and self.global_step % o["eval_every"] == 0):
                    val_loss = self._validation()  # else it just ran at this step
                self._flush()
                is_best = val_loss is not None and (self.best_val is None or val_loss < self.best_val)
                if is_best:
                    self.best_val = val_loss
                self.last_metrics.update(train_loss=self._recent_loss())
                if self.best_val is not None:
                    self.last_metrics["best_val_loss"] = self.best_val
                if o["save_every_epoch"]:
                    last_path = self._save(epoch_complete, is_best)
                    self._call("on_checkpoint_saved", str(last_path))
                self._call("on_epoch_end", epoch, dict(self.last_metrics))
                if self.should_stop:
                    break
            if interrupted:
                path = self._save_temp()
                raise RunInterrupted(
                    f"interrupted by {signal.Signals(interrupted).name} at step {self.global_step}; "
                    f"saved {path}\nresume with: apt-kernel run <pipeline> --resume latest", interrupted)
        except BaseException as exc:
            self.progress.close()
            if isinstance(exc, DistributedError):
                self._save_after_failure(exc)
            self._call("on_exception", exc)
            self._restore_handlers(previous_handlers)
            self.dist.close()
            raise
        self.progress.close()
        self._restore_handlers(previous_handlers)
        self._flush()
        self.manager.clear_temp()
        result = self._result(val_loss, last_path, started)
        if o["export"]:
            exported = self._export(context.run_dir / "model", getattr(self.data, "tokenizer", None))
            if exported is not None:
                result["export_dir"] = str(exported)
        self._call("on_fit_end", result)
        self.dist.close()
        return result

    def _after_step(self, batches_done: int, started: float) -> None:
        self.batches_done = batches_done
        metrics = {"loss": self._pending[-1][1], "lr": self.scheduler.get_last_lr()[0]}
        if self.o["log_every"] and self.global_step % self.o["log_every"] == 0:
            self._log_interval(started)
        self.progress.update(self.global_step, self.epoch)
        self._call("on_train_batch_end", self.global_step, metrics)

    def _save_after_failure(self, error: DistributedError) -> None:
        """Every rank is alive and at the same check: save the last completed step (rank 0 writes)."""
        try:
            error.checkpoint = str(self._save_temp())
            self.log(f"{error}\nsaved {error.checkpoint} (step {self.global_step}); "
                     "resume with: apt-kernel run <pipeline> --resume latest")
        except Exception as exc:  # noqa: BLE001 - the original error is what the user must see
            self.log(f"warning: could not save a checkpoint after the failure: {exc}")

    def _restore_handlers(self, handlers: dict) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def _log_interval(self, started: float) -> None:
        self._flush()
        seconds = max(time.perf_counter() - started, 1e-9)
        rate = float(self.tokens) / seconds
        self.last_metrics["tokens_per_s"] = rate
        mfu = self._mfu(rate)
        extra = f", MFU {mfu:.1%}" if mfu is not None else ""
        self.progress.set_loss(self.loss_history[-1], rate)
        if not self.progress.enabled:
            self.log(f"epoch {self.epoch} step {self.global_step}: loss {self.loss_history[-1]:.4f}, "
                     f"{rate:,.0f} tok/s{extra}")

    def _mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation: (6N + 12 L H Q T) FLOPs per token over the device's dense bf16 peak."""
        config = getattr(self.context.model, "config", None)
        if self.device.type != "cuda" or config is None:
            return None
        name = torch.cuda.get_device_name(self.device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak is None:
            return None
        n = sum(p.numel() for p in self.context.model.parameters())
        q = config.d_model // config.num_heads
        per_token = 6 * n + 12 * config.num_layers * config.num_heads * q * getattr(self.data, "block_size", 0)
        return tokens_per_s * self.dist.world_size * per_token / peak

    def _recent_loss(self) -> float | None:
        recent = self.loss_history[-20:]
        return sum(recent) / len(recent) if recent else None

    def _result(self, val_loss, last_path, started) -> dict:
        return {
            "train_loss": self._recent_loss(), "val_loss": val_loss, "best_val_loss": self.best_val,
            "unigram_entropy": getattr(self.data, "unigram_entropy", None), "steps": self.global_step,
            "epochs": self.epoch + 1, "tokens": int(self.tokens), "seconds": round(time.perf_counter() - started, 1),
            "checkpoint": str(last_path) if last_path else None, "loss_history": list(self.loss_history),
            "world_size": self.dist.world_size,
        }

    def _export(self, directory: Path, tokenizer: Any) -> Path | None:
        model = self.model
        if self.fsdp:  # gather the whole model (every rank takes part), then rank 0 saves a plain copy
            full = self._model_and_optimizer_state()[0]
            if not self.is_main:
                return None
            model = type(self.model)(self.model.config)
            model.load_state_dict(full)
        elif not self.is_main:
            return None
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_model

            save_model(model, str(directory / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save(directory / "tokenizer")
        return directory


class _Progress:
    """A rich progress bar with loss, tokens/s and ETA; plain log lines when not on a terminal."""

    def __init__(self, enabled: bool, total: int, done: int, log, log_every: int) -> None:
        self.log, self.bar, self.enabled = log, None, enabled
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                TextColumn("step {task.completed}/{task.total}"),
                                TextColumn("loss {task.fields[loss]:.4f}"),
                                TextColumn("{task.fields[rate]:,.0f} tok/s"), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), rate=0.0,
                                          epoch=0)
            self.bar.start()

    def update(self, step: int, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch)

    def set_loss(self, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, loss=loss, rate=rate)

    def note(self, message: str) -> None:
        (self.bar.console.print if self.bar is not None else self.log)(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

"""The training loop: AdamW, warmup + cosine schedule, gradient accumulation normalised by real tokens,
clipping, mixed precision, validation, checkpoints you can resume from exactly, callbacks, and DDP/FSDP
under torchrun. Model, data and loss come from the pipeline's other components, through the kernel's
protocols (``apt_sdk.DataModule``, ``Model``, ``Loss``); callbacks see this object as a ``TrainerState``.

What makes it trustworthy, and why:
- The loss of an optimizer step is sum / count over every micro-batch of the window and every rank
  (never a mean of per-batch means): gradients of the sums are accumulated and divided once by the
  global token count.
- A step with inf/NaN gradients is skipped on the device (fused AdamW reads ``found_inf``), so the
  loop needs no host sync per step; skipped steps and losses are read back at the logging interval.
- A checkpoint holds the whole state (``state.py``), including the position inside the epoch and every
  rank's RNG states, so a resumed run continues exactly where the killed one was.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from apt_sdk import BuildContext, RunInterrupted, UserError

from . import cadence, state
from .checkpoint import CheckpointManager
from .distributed import Distributed, shard_model, to_device
from .failures import DistributedError, DistributedErrorHandler
from .optim import param_groups, warmup_cosine
from .progress import Progress, Throughput, mfu
from .step import flush, guarded, train_step, windows


class Trainer:
    def __init__(self, options: dict, context: BuildContext) -> None:
        self.o = options
        self.context = context
        self.should_stop = False
        self.skip_next_step = False  # set by a callback in on_before_optimizer_step
        self.global_step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already trained on
        self.loss_history: list[float] = []
        self.best_val: float | None = None
        self.best_step: int | None = None  # the step of best_val
        self.best_weights: dict | None = None  # the model at best_step on the CPU, when no checkpoint holds it
        self.validated_at: int | None = None  # the step of the last validation: never two at one step
        self.saved: tuple[int, bool] | None = None  # (step, epoch_complete) of the last checkpoint
        self.last_path: Path | None = None  # the last regular checkpoint
        self.val_count: int | None = None  # validation batches on this rank, counted once for eval_batches
        self.last_metrics: dict = {}
        self.optimizer = None
        self.seq_len: int | None = None  # of the first batch, for MFU
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, skipped) on device
        self._signal: int | None = None
        self.dist: Distributed | None = None
        self.resumed_from: Path | None = None

    # -- the TrainerState callbacks see (apt_sdk.TrainerState) -----------------------------------
    @property
    def step(self) -> int:
        return self.global_step

    @property
    def metrics(self) -> dict:
        return self.last_metrics

    @property
    def losses(self) -> list[float]:
        return self.loss_history

    @property
    def model(self):
        return self.context.model

    @property
    def data(self):
        return self.context.data

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def rank(self) -> int:
        return self.context.rank

    @property
    def world_size(self) -> int:
        return self.context.world_size

    @property
    def run_dir(self) -> Path:
        return self.context.run_dir

    def log(self, message: str) -> None:
        self.context.log(message)

    def report_error(self, error: dict) -> None:
        self.context.report_error(error)

    def _call(self, event: str, *args) -> None:
        self.context.callbacks.call(event, self, *args)

    # -- set-up ----------------------------------------------------------------------------------
    def _setup(self, context: BuildContext) -> None:
        o = self.o
        self.dist = Distributed(o["device"])
        self.device = self.dist.device
        self.errors = DistributedErrorHandler(device=self.device)  # a failing rank must not leave the others hanging
        if o["deterministic"]:
            torch.use_deterministic_algorithms(True)
        if o["precision"] == "fp16" and self.device.type != "cuda":
            raise UserError("[trainer] precision = \"fp16\" needs CUDA (GradScaler); use \"bf16\" on CPU")
        model = context.model.to(self.device)
        if hasattr(context.data, "configure_distributed"):
            context.data.configure_distributed(self.dist.rank, self.dist.world_size)
        self.fsdp = o["strategy"] == "fsdp"
        if self.fsdp:
            if not torch.distributed.is_initialized():
                raise UserError("[trainer] strategy = \"fsdp\" runs under torchrun: add --nproc-per-node N")
            shard_model(model)
            self.train_module = model
        else:
            self.train_module = torch.compile(model) if o["compile"] else model
            if self.dist.enabled:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.train_module = torch.nn.parallel.DistributedDataParallel(self.train_module, device_ids=ids)
        # a short last batch of an epoch would change the compiled graph's batch size and recompile it
        # (~7 s on CPU for a small model, more than the whole epoch's tail is worth): it runs eager instead
        self.eager_short_batches = o["compile"] and not self.fsdp and not self.dist.enabled
        self.compiled_rows: int | None = None
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

    def _autocast(self):
        precision = self.o["precision"]
        if precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def forward_loss(self, module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: to_device(v, self.device) for k, v in batch.items()}
        if self.seq_len is None:
            self.seq_len = next((v.shape[1] for v in batch.values() if v.dim() >= 2), None)
        with self._autocast():
            outputs = module(**{k: v for k, v in batch.items() if k != "labels"})
        loss_sum, count = self.context.loss(outputs, batch)
        return loss_sum.float(), count

    # -- checkpoints -----------------------------------------------------------------------------
    def _save(self, epoch_complete: bool, is_best: bool = False) -> Path:
        flush(self)
        full = state.capture(self, epoch_complete)
        extra = {k: v for k, v in full.items() if k not in (
            "scheduler_state_dict", "epoch", "global_step", "loss_history", "metrics", "config")}
        return self.manager.save_checkpoint(self.model, self.optimizer, self.scheduler, self.epoch,
                                            self.global_step, self.loss_history, full["metrics"],
                                            getattr(self.data, "tokenizer", None), full["config"], is_best,
                                            extra=extra)

    def _save_temp(self) -> Path:
        flush(self)
        return self.manager.save_temp(state.capture(self, epoch_complete=False))

    def _resume(self, spec: str) -> tuple[int, int]:
        path = self.manager.resolve(spec)
        self.resumed_from = path
        return state.restore(self, path, self.manager.read(path))

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            self._signal = signum

        return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def fit(self, context: BuildContext) -> dict:
        o = self.o
        self._setup(context)
        resume = context.resume or o["resume_from"]
        start_epoch, start_batch = self._resume(resume) if resume else (0, 0)
        self.tokens = torch.zeros((), device=self.device)
        started = time.perf_counter()
        if resume and self._finished(start_epoch):
            if cadence.ended(self):
                return self._nothing_to_do(started)
            self.log(f"the run finished training at step {self.global_step}, but its end-of-run work (model/, "
                     "the callbacks' on_fit_end) did not complete: doing it now")
            self._call("on_fit_start")
            return self._end(started, self.resumed_from)
        previous_handlers = self._install_signal_handlers()
        self.throughput = Throughput()
        deadline = started + o["max_time_minutes"] * 60 if o["max_time_minutes"] else None
        context.model.train()
        self.progress = Progress(context.progress, self.total_steps, self.global_step, self.log)
        self._call("on_fit_start")
        interrupted = None
        try:
            for epoch in range(start_epoch, o["epochs"]):
                self.epoch, self.batches_done = epoch, start_batch if epoch == start_epoch else 0
                self._call("on_epoch_start", epoch)
                for first, window in guarded(self, windows(self, epoch, self.batches_done)):
                    if self._at_max_steps():  # resumed at the limit: only the end of the run is left
                        self.should_stop = True
                        break
                    train_step(self, window, first)
                    if not self.errors.failed:
                        with self.errors.capture(self.global_step):
                            self._after_step(first + len(window))
                    cadence.after_step(self)
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
                cadence.end_epoch(self, epoch)
                if self.should_stop:
                    break
            if interrupted:
                path = self._save_temp()
                raise RunInterrupted(f"interrupted by {signal.Signals(interrupted).name} at step {self.global_step}; "
                                     f"saved {path}\nresume with: {context.resume_command}", interrupted)
        except BaseException as exc:
            self.progress.close()
            if isinstance(exc, DistributedError):
                self._save_after_failure(exc)
            self._call("on_exception", exc)
            self._restore_handlers(previous_handlers)
            self._close()
            raise
        self.progress.close()
        self._restore_handlers(previous_handlers)
        return self._end(started)

    def _end(self, started: float, last_path: Path | None = None) -> dict:
        """The end-of-run work: model/, the callbacks' on_fit_end, then its record in metadata.json (a run
        killed before that record is finished by its next --resume, not retrained)."""
        flush(self)
        self.manager.clear_temp()
        result = self._result(started, last_path)
        if self.o["export"] is not False:
            cadence.export(self, result)
        self._call("on_fit_end", result)
        cadence.record_end(self, result)
        self._close()
        return result

    def _at_max_steps(self) -> bool:
        return bool(self.o["max_steps"]) and self.global_step >= self.o["max_steps"]

    def _finished(self, start_epoch: int) -> bool:
        """Nothing left: every epoch done, or max_steps reached and its final checkpoint written (a temp
        checkpoint at max_steps, from a kill, still needs the validation and checkpoint of the end)."""
        recorded = any(c["global_step"] == self.global_step for c in self.manager.checkpoints())
        return start_epoch >= self.o["epochs"] or (self._at_max_steps() and recorded)

    def _nothing_to_do(self, started: float) -> dict:
        """A finished run resumed with the limits it finished under: no step past them."""
        limit = f"max_steps = {self.o['max_steps']}" if self._at_max_steps() else f"epochs = {self.o['epochs']}"
        message = (f"nothing to train: the run already finished at step {self.global_step} ({limit}); "
                   f"raise {limit.split(' ')[0]} to train further")
        self.log(message)
        result = self._result(started, self.resumed_from)
        result["summary"].insert(0, ("nothing to do", message.split(": ", 1)[1]))
        self._close()
        return result

    def _close(self) -> None:
        """Let go of the DDP wrapper, then of the process group. DDP holds the group: left alive until the
        interpreter exits, gloo's threads may still hold work with Python tensors during finalisation
        and abort the process ("terminate called without an active exception")."""
        self.train_module = None
        if self.dist.started_group:
            gc.collect()
        self.dist.close()

    def _after_step(self, batches_done: int) -> None:
        self.batches_done = batches_done
        metrics = {"loss": self.pending[-1][1], "lr": self.scheduler.get_last_lr()[0]}
        if self.o["log_every"] and self.global_step % self.o["log_every"] == 0:
            self._log_interval()
        self.progress.update(self.global_step, self.epoch)
        self._call("on_train_batch_end", self.global_step, metrics)

    def _log_interval(self) -> None:
        flush(self)
        rate = self.throughput.interval(float(self.tokens))
        self.last_metrics["tokens_per_s"] = rate
        utilisation = mfu(self.model, self.device, rate, self.seq_len or getattr(self.data, "block_size", None),
                          self.dist.world_size)
        if utilisation is not None:
            self.last_metrics["mfu"] = utilisation
        self.progress.interval(self.epoch, self.global_step, self.loss_history[-1], rate, utilisation)

    def _save_after_failure(self, error: DistributedError) -> None:
        """Every rank is alive and at the same check: save the last completed step (rank 0 writes)."""
        try:
            error.checkpoint = str(self._save_temp())
            self.log(f"{error}\nsaved {error.checkpoint} (step {self.global_step}); "
                     f"resume with: {self.context.resume_command}")
        except Exception as exc:  # noqa: BLE001 - the original error is what the user must see
            self.log(f"warning: could not save a checkpoint after the failure: {exc}")

    def _restore_handlers(self, handlers: dict) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def _recent_loss(self) -> float | None:
        recent = self.loss_history[-20:]
        return sum(recent) / len(recent) if recent else None

    def _result(self, started: float, last_path: Path | None = None) -> dict:
        last_path = last_path or self.last_path
        result = {
            "train_loss": self._recent_loss(), "val_loss": self.last_metrics.get("val_loss"),
            "best_val_loss": self.best_val,
            "steps": self.global_step, "epochs": self.epoch + 1, "tokens": int(self.tokens),
            "seconds": round(time.perf_counter() - started, 1), "checkpoint": str(last_path) if last_path else None,
            "loss_history": list(self.loss_history), "world_size": self.dist.world_size,
            # this process's peak of allocated CUDA memory, as torch.cuda.max_memory_allocated counts it
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
            if self.device.type == "cuda" else None,
        }
        shown = [("train loss", "train_loss", "{:.4f}"), ("val loss", "val_loss", "{:.4f}"),
                 ("best val loss", "best_val_loss", "{:.4f}"), ("steps", "steps", "{}"), ("epochs", "epochs", "{}"),
                 ("tokens", "tokens", "{:,}"), ("seconds", "seconds", "{:.1f}"), ("processes", "world_size", "{}"),
                 ("peak GPU memory", "peak_memory_gib", "{:.3f} GiB"), ("last checkpoint", "checkpoint", "{}")]
        result["summary"] = [(label, form.format(result[key])) for label, key, form in shown if result[key] is not None]
        result["summary"] += [(str(label), str(text)) for label, text in getattr(self.data, "summary", None) or []]
        return result

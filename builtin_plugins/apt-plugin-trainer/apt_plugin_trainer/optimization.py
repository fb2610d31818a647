"""The optimisation step: AdamW over a window of micro-batches, normalised by the window's global token count,
clipped, skipped on the device when its gradients are not finite, on a warmup + cosine schedule; and the
deferred read-back of each step's loss. Its state (optimizer, schedule, scaler) goes into checkpoints.

- The loss of an optimizer step is sum / count over every micro-batch of the window and every rank (never a
  mean of per-batch means): gradients of the sums are accumulated and divided once by the global count.
- A step with inf/NaN gradients is skipped on the device (fused AdamW reads ``found_inf``), so the loop needs
  no host sync per step; skipped steps and losses are read back at the logging interval (``flush``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .optim import param_groups, warmup_cosine
from .options import TrainerOptions
from .position import Position
from .run_state import Events, RunState
from .runtime import Runtime
from .state_dicts import dcp, load_optimizer_state


class Optimization:
    def __init__(self, options: TrainerOptions, runtime: Runtime, position: Position, state: RunState,
                 events: Events, total_steps: int) -> None:
        self.runtime, self.position, self.state, self.events = runtime, position, state, events
        self.grad_clip = options.grad_clip if options.grad_clip > 0 else float("inf")
        model = runtime.model
        # fused AdamW skips a step on the device when told found_inf: no host sync to check gradients;
        # sharded (DTensor) parameters take the foreach kernels and a host-side check instead
        self.optimizer = torch.optim.AdamW(param_groups(model, options.weight_decay), lr=options.learning_rate,
                                           betas=(0.9, 0.95), fused=not runtime.fsdp, foreach=runtime.fsdp or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(options.warmup(total_steps), total_steps, options.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda") if options.precision == "fp16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, skipped) on the device
        self.tokens = torch.zeros((), device=runtime.device)  # target tokens trained on in this process's run
        state.optimizer = self.optimizer

    def step(self, window: list[dict], first_index: int) -> None:
        """One optimizer step. Every rank runs the same collectives even after a local error (it only
        skips its own work) and checks the error flag before each backward that synchronises: a rank
        that failed in data loading or forward is known to all before DDP/FSDP wait for its gradients."""
        runtime, errors = self.runtime, self.runtime.errors
        module, step = runtime.train_module, self.position.global_step + 1
        count, loss_total = torch.zeros((), device=runtime.device), torch.zeros((), device=runtime.device)
        if not window:  # the data loader failed on this rank
            errors.check()
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            if runtime.fsdp:
                errors.check()  # FSDP forward all-gathers
                module.set_requires_gradient_sync(last)
            sync = nullcontext() if last or runtime.fsdp or not runtime.dist.enabled else module.no_sync()
            with sync:
                if not errors.failed:
                    with errors.capture(step):
                        loss_sum, n = runtime.forward_loss(runtime.module_for(batch), batch)
                if last or runtime.fsdp:
                    errors.check()
                if not errors.failed:
                    with errors.capture(step):
                        (self.scaler.scale(loss_sum) if self.scaler else loss_sum).backward()
                        loss_total += loss_sum.detach()
                        count += n
                        self.events("on_micro_batch_end", self.position.epoch, first_index + i, batch)
        totals = runtime.dist.sum(torch.stack([loss_total, count]))  # the window's global token count
        if errors.failed:
            return  # reported by the check at the end of this step
        with errors.capture(step):
            self._update(totals)

    def _update(self, totals: torch.Tensor) -> None:
        # DDP averaged the gradients over ranks; undo that and divide the sums by the global count
        factor = self.runtime.dist.world_size / totals[1].clamp(min=1)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, factor)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        # gradients are final here: unscaled, clipped
        self.events("on_before_optimizer_step", self.position.global_step + 1)
        found_inf = (~torch.isfinite(norm)).float()
        if self.state.skip_next_step:  # a callback (e.g. the gradient monitor) asked to drop this update
            found_inf, self.state.skip_next_step = torch.ones_like(found_inf), False
        if self.runtime.fsdp:
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
        self.position.global_step += 1
        self.tokens = self.tokens + totals[1]
        self.pending.append((self.position.global_step, totals[0] / totals[1].clamp(min=1), found_inf))

    def last_loss(self) -> torch.Tensor:
        """The last step's loss, still on the device (reading it syncs)."""
        return self.pending[-1][1]

    def flush(self) -> None:
        """Read the pending per-step losses back from the device: the one host sync per interval."""
        if not self.pending:
            return
        values = torch.stack([torch.stack([loss, skipped]) for _, loss, skipped in self.pending]).tolist()
        for (step, _, _), (loss, skipped) in zip(self.pending, values, strict=True):
            self.position.loss_history.append(loss)
            if skipped:
                report = {"type": "NonFiniteGradients", "severity": "warning", "global_step": step,
                          "epoch": self.position.epoch, "rank": self.runtime.dist.rank,
                          "message": f"step {step}: gradients were inf/NaN; the update was skipped"}
                self.state.log(f"warning: {report['message']}")
                self.state.report_error(report)
        self.pending.clear()

    def optimizer_state(self) -> dict:
        """The optimizer's state, gathered whole on rank 0 and keyed by parameter name under FSDP (a collective:
        every rank calls it after ``Runtime.model_state``)."""
        if not self.runtime.fsdp:
            return self.optimizer.state_dict()
        helpers = dcp()
        return helpers.get_optimizer_state_dict(self.runtime.model, self.optimizer, options=helpers.StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, state: dict) -> None:
        if self.runtime.fsdp:
            helpers = dcp()
            options = helpers.StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            helpers.set_optimizer_state_dict(self.runtime.model, self.optimizer, state, options=options)
        else:
            load_optimizer_state(self.runtime.model, self.optimizer, state)

    def state_dict(self) -> dict:
        """The schedule and the fp16 scaler (the optimizer's own state is gathered with the model's weights)."""
        return {"scheduler_state_dict": self.scheduler.state_dict(),
                "scaler_state_dict": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        if self.scaler is not None and state.get("scaler_state_dict"):
            self.scaler.load_state_dict(state["scaler_state_dict"])

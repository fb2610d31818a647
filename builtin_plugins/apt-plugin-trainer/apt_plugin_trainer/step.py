"""One optimizer step over a window of micro-batches, the deferred read-back of its loss, and one
validation pass. Functions of the ``Trainer`` whose state they change."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .trainer import Trainer


def train_step(trainer: Trainer, window: list[dict], first_index: int) -> None:
    """One optimizer step. Every rank runs the same collectives even after a local error (it only
    skips its own work) and checks the error flag before each backward that synchronises: a rank
    that failed in data loading or forward is known to all before DDP/FSDP wait for its gradients."""
    module, count, step = trainer.train_module, torch.zeros((), device=trainer.device), trainer.global_step + 1
    loss_total = torch.zeros((), device=trainer.device)
    if not window:  # the data loader failed on this rank
        trainer.errors.check()
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        if trainer.fsdp:
            trainer.errors.check()  # FSDP forward all-gathers
            module.set_requires_gradient_sync(last)
        sync = nullcontext() if last or trainer.fsdp or not trainer.dist.enabled else module.no_sync()
        with sync:
            if not trainer.errors.failed:
                with trainer.errors.capture(step):
                    loss_sum, n = trainer.forward_loss(_short_batch_eager(trainer, batch) or module, batch)
            if last or trainer.fsdp:
                trainer.errors.check()
            if not trainer.errors.failed:
                with trainer.errors.capture(step):
                    (trainer.scaler.scale(loss_sum) if trainer.scaler else loss_sum).backward()
                    loss_total += loss_sum.detach()
                    count += n
                    trainer.context.callbacks.call("on_micro_batch_end", trainer, trainer.epoch, first_index + i,
                                                   batch)
    totals = trainer.dist.sum(torch.stack([loss_total, count.float()]))  # the window's global token count
    if trainer.errors.failed:
        return  # reported by the check at the end of this step
    with trainer.errors.capture(step):
        update(trainer, totals)


def _short_batch_eager(trainer: Trainer, batch: dict) -> torch.nn.Module | None:
    """The uncompiled model for a batch with fewer rows than the first one compiled; None otherwise."""
    if not trainer.eager_short_batches:
        return None
    rows = next((v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim()), None)
    if trainer.compiled_rows is None:
        trainer.compiled_rows = rows
        return None
    return trainer.model if rows is not None and rows < trainer.compiled_rows else None


def update(trainer: Trainer, totals: torch.Tensor) -> None:
    # DDP averaged the gradients over ranks; undo that and divide the sums by the global count
    factor = trainer.dist.world_size / totals[1].clamp(min=1)
    if trainer.scaler is not None:
        trainer.scaler.unscale_(trainer.optimizer)
    grads = [p.grad for p in trainer.params if p.grad is not None]
    torch._foreach_mul_(grads, factor)
    clip = trainer.o["grad_clip"] if trainer.o["grad_clip"] > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(trainer.params, clip, foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    # gradients are final here: unscaled, clipped
    trainer.context.callbacks.call("on_before_optimizer_step", trainer, trainer.global_step + 1)
    found_inf = (~torch.isfinite(norm)).float()
    if trainer.skip_next_step:  # a callback (e.g. the gradient monitor) asked to drop this update
        found_inf, trainer.skip_next_step = torch.ones_like(found_inf), False
    if trainer.fsdp:
        if not found_inf.item():  # FSDP: one host sync per step decides the skip
            trainer.optimizer.step()
    elif trainer.scaler is not None:
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    else:
        trainer.optimizer.found_inf = found_inf  # read by fused AdamW, as GradScaler does
        try:
            trainer.optimizer.step()
        finally:
            del trainer.optimizer.found_inf
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    trainer.global_step += 1
    trainer.tokens = trainer.tokens + totals[1]
    trainer.pending.append((trainer.global_step, totals[0] / totals[1].clamp(min=1), found_inf))


def flush(trainer: Trainer) -> None:
    """Read the pending per-step losses back from the device: the one host sync per interval."""
    if not trainer.pending:
        return
    values = torch.stack([torch.stack([loss, skipped]) for _, loss, skipped in trainer.pending]).tolist()
    for (step, _, _), (loss, skipped) in zip(trainer.pending, values, strict=True):
        trainer.loss_history.append(loss)
        if skipped:
            report = {"type": "NonFiniteGradients", "severity": "warning", "global_step": step,
                      "epoch": trainer.epoch, "rank": trainer.dist.rank,
                      "message": f"step {step}: gradients were inf/NaN; the update was skipped"}
            trainer.log(f"warning: {report['message']}")
            trainer.context.report_error(report)
    trainer.pending.clear()


def sampled(count: int, wanted: int) -> set[int] | None:
    """``wanted`` batch indices spread evenly over ``count`` (the middle of each equal share), so a few
    batches estimate the whole split rather than its beginning; None when every batch is wanted."""
    if not wanted or wanted >= count:
        return None
    return {(2 * i + 1) * count // (2 * wanted) for i in range(wanted)}


@torch.no_grad()
def validate(trainer: Trainer) -> float | None:
    model = trainer.context.model
    model.eval()
    sums = torch.zeros(2, device=trainer.device)
    with trainer.errors.capture(trainer.global_step):
        chosen = None
        if trainer.o["eval_batches"]:
            if trainer.val_count is None:  # the protocol gives no length: count this rank's batches once
                trainer.val_count = sum(1 for _ in trainer.data.val_batches())
            chosen = sampled(trainer.val_count, trainer.o["eval_batches"])
        for i, batch in enumerate(trainer.data.val_batches()):
            if chosen is None or i in chosen:
                loss_sum, n = trainer.forward_loss(model, batch)
                sums += torch.stack([loss_sum, n.float()])
    model.train()
    trainer.errors.check()
    total, count = trainer.dist.sum(sums).tolist()
    return total / count if count else None


def validation(trainer: Trainer) -> float | None:
    val_loss = validate(trainer)
    if val_loss is not None:
        trainer.last_metrics["val_loss"] = val_loss
        trainer.progress.note(f"step {trainer.global_step}: val loss {val_loss:.4f}")
        with trainer.errors.capture(trainer.global_step):
            metrics = {"val_loss": val_loss, "step": trainer.global_step}
            trainer.context.callbacks.call("on_validation_end", trainer, metrics)
    return val_loss


def windows(trainer: Trainer, epoch: int, start: int):
    """(first micro-batch index, list of micro-batches) per optimizer step of this epoch."""
    size, window, first = trainer.o["accumulate_grad_batches"], [], start
    for index, batch in enumerate(trainer.data.train_batches(epoch, start), start=start):
        window.append(batch)
        if len(window) == size:
            yield first, window
            window, first = [], index + 1
    if window:
        yield first, window


def guarded(trainer: Trainer, batches):
    """The windows, with a loader error kept for the next check: this rank then trains on nothing."""
    iterator = iter(batches)
    while True:
        item = None
        with trainer.errors.capture(trainer.global_step + 1):
            item = next(iterator, None)
        if trainer.errors.failed:
            yield trainer.batches_done, []
            return
        if item is None:
            return
        yield item


"""When the trainer validates and checkpoints, which validation is the best, and which weights model/
gets. Functions of the ``Trainer`` whose state they change, called after each optimizer step, at each
epoch end and at the end of the run.

The best validation's weights are read back from its checkpoint when one was written at that step (the
default cadence); only a best that no checkpoint holds is copied to the CPU.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import state
from .step import flush, validation

if TYPE_CHECKING:
    from .trainer import Trainer


def after_step(trainer: Trainer) -> None:
    """Validate every eval_every steps; checkpoint every checkpoint_every steps, or after each validation
    when checkpoint_every is 0."""
    o, step = trainer.o, trainer.global_step
    if o["eval_every"] and step % o["eval_every"] == 0:
        validate(trainer)
        if not o["checkpoint_every"]:
            checkpoint(trainer, epoch_complete=False)
    if o["checkpoint_every"] and step % o["checkpoint_every"] == 0:
        checkpoint(trainer, epoch_complete=False)
    keep_best(trainer)


def end_epoch(trainer: Trainer, epoch: int) -> None:
    """Validation and a checkpoint where the cadence or the end of the run asks for them; callbacks."""
    o = trainer.o
    end = trainer.should_stop or epoch == o["epochs"] - 1
    if end or not o["eval_every"]:
        validate(trainer)
    if end or not (o["eval_every"] or o["checkpoint_every"]):
        checkpoint(trainer, epoch_complete=not trainer.should_stop)
    keep_best(trainer)
    flush(trainer)
    trainer.last_metrics.update(train_loss=trainer._recent_loss())
    trainer._call("on_epoch_end", epoch, dict(trainer.last_metrics))


def validate(trainer: Trainer) -> None:
    """One validation at this step (never two); a finite loss below the best so far is the new best."""
    if trainer.validated_at == trainer.global_step:
        return
    trainer.validated_at = trainer.global_step
    val_loss = validation(trainer)
    worse = trainer.best_val is not None and val_loss is not None and val_loss >= trainer.best_val
    if val_loss is None or not math.isfinite(val_loss) or worse:  # a NaN validation is never the best
        return
    trainer.best_val, trainer.best_step, trainer.best_weights = val_loss, trainer.global_step, None
    trainer.last_metrics["best_val_loss"] = val_loss


def checkpoint(trainer: Trainer, epoch_complete: bool) -> None:
    """A checkpoint of this step (marked best when this step's validation was the best); written again
    only to record that the step also completed the epoch."""
    step = trainer.global_step
    if not trainer.o["save_checkpoints"] or trainer.saved in ((step, epoch_complete), (step, True)):
        return
    flush(trainer)
    trainer.last_metrics.update(train_loss=trainer._recent_loss())
    trainer.last_path = trainer._save(epoch_complete, is_best=trainer.best_step == step)
    trainer.saved = (step, epoch_complete)
    trainer._call("on_checkpoint_saved", str(trainer.last_path))


def _exports_best(trainer: Trainer) -> bool:
    return trainer.o["export"] in ("best", True)


def keep_best(trainer: Trainer) -> None:
    """With export = "best": a best found at this step that no checkpoint of this step holds is copied
    to the CPU (a collective under FSDP: every rank decides alike)."""
    step = trainer.global_step
    if _exports_best(trainer) and trainer.best_step == step and trainer.best_weights is None \
            and (trainer.saved is None or trainer.saved[0] != step):
        trainer.best_weights = state.model_state(trainer, copy=True)


def export(trainer: Trainer, result: dict) -> None:
    """model/: the best validation's weights (export = "best", the default) or the last step's."""
    weights, step = None, trainer.global_step
    if _exports_best(trainer) and trainer.best_step is not None and trainer.best_step != step:
        # in memory, or in its checkpoint (under FSDP the other ranks hold an empty dict)
        weights = trainer.best_weights if trainer.best_weights is not None else _best_from_checkpoint(trainer)
        step = trainer.best_step if weights is not None else step
    which = (f"the best validation: step {step}, val loss {trainer.best_val:.4f}" if step == trainer.best_step
             else f"the last step, {step}")
    exported = state.export(trainer, trainer.context.run_dir / "model", weights)
    if exported is not None:
        result["export_dir"] = str(exported)
        result["exported_step"] = step
        result["summary"].append(("model", f"{exported} ({which})"))


def ended(trainer: Trainer) -> bool:
    """Whether the end-of-run work of this step completed (``record_end``); a run killed during it, in its
    export or a callback's on_fit_end (a test set's scoring, say), has not ended."""
    return (trainer.manager.metadata().get("end_of_run") or {}).get("global_step") == trainer.global_step


def record_end(trainer: Trainer, result: dict) -> None:
    """metadata.json's ``end_of_run``: the step, and the result's numbers (the callbacks' too: a test accuracy)."""
    if not trainer.is_main or not trainer.manager.metadata_path.exists():  # no checkpoint: nothing resumes it
        return
    numbers = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in result.items()
               if isinstance(v, int | float | str) or v is None}
    data = trainer.manager.metadata()
    data["end_of_run"] = {"global_step": trainer.global_step, "result": numbers}
    trainer.manager._write_metadata(data)


def _best_from_checkpoint(trainer: Trainer) -> dict | None:
    manager = trainer.manager
    best = [c for c in manager.checkpoints() if c["is_best"] and c["global_step"] == trainer.best_step]
    if not best:
        trainer.log(f"note: the best validation (step {trainer.best_step}) is in no checkpoint (it came before "
                    "this run resumed); model/ holds the last step's weights")
        return None
    return manager.read(manager.dir / best[-1]["file"])["model_state_dict"]

"""Where a run is: optimizer steps done, the epoch and the micro-batches of it done, the loss of every step and
the latest metrics. A checkpoint records it, so a resumed run continues at the same micro-batch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Position:
    global_step: int = 0
    epoch: int = 0
    batches_done: int = 0  # micro-batches of the current epoch already trained on
    loss_history: list[float] = field(default_factory=list)  # per optimizer step, read back at each interval
    metrics: dict = field(default_factory=dict)  # val_loss, best_val_loss, train_loss, tokens_per_s, mfu

    def recent_loss(self) -> float | None:
        """The training loss of the last 20 steps (None before the first)."""
        recent = self.loss_history[-20:]
        return sum(recent) / len(recent) if recent else None

    def state_dict(self, epoch_complete: bool) -> dict:
        """``epoch_complete``: the checkpoint is of the epoch's end, so a resume starts the next one."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "loss_history": list(self.loss_history),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "position": {"epoch": self.epoch, "batches_done": self.batches_done, "epoch_complete": epoch_complete},
        }

    def load_state_dict(self, state: dict) -> tuple[int, int]:
        """Restore; returns the (epoch, micro-batch) to continue from. A checkpoint without ``position`` (the
        original format) was written at an epoch's end."""
        self.global_step, self.loss_history = state["global_step"], list(state["loss_history"])
        self.metrics = dict(state.get("metrics") or {})
        position = state.get("position") or {"epoch": state["epoch"], "batches_done": 0, "epoch_complete": True}
        self.epoch = position["epoch"]
        if position["epoch_complete"]:
            return position["epoch"] + 1, 0
        return position["epoch"], position["batches_done"]

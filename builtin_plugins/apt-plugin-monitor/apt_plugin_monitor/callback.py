"""The `gradient-monitor` callback: checks gradients every N steps, reports NaN/Inf with layer names
through the kernel's error hook, optionally skips the step or stops, and writes the flow plot and
statistics beside the checkpoints when training ends."""

from __future__ import annotations

import json
import math
from pathlib import Path

from apt_sdk import Callback, UserError

from .gradients import GradientMonitor


class GradientMonitorCallback(Callback):
    def __init__(self, every: int, on_anomaly: str, vanishing: float, exploding: float, out_dir: Path) -> None:
        self.every, self.on_anomaly, self.out_dir = every, on_anomaly, out_dir
        self.vanishing, self.exploding = vanishing, exploding
        self.monitor: GradientMonitor | None = None
        self.anomalies: list[dict] = []

    def on_fit_start(self, trainer) -> None:
        if trainer.model is None:  # sandboxed: the gradients stay in the training process
            trainer.log("gradient-monitor: this callback reads the model's gradients, which a sandboxed callback "
                        "cannot see; run it in-process (sandbox = false) to monitor gradients")
            return
        self.monitor = GradientMonitor(trainer.model, vanishing=self.vanishing, exploding=self.exploding)

    def on_before_optimizer_step(self, trainer, step: int) -> None:
        if self.monitor is None or step % self.every:
            return
        total = self.monitor.log_gradient_norms(step)
        broken = [i for i in self.monitor.last_anomalies() if i["kind"] in ("nan", "inf")]
        if not broken:
            return
        layers = [i["layer"] for i in broken]
        event = {"type": "NonFiniteGradients", "severity": "warning" if self.on_anomaly != "stop" else "error",
                 "global_step": step, "epoch": trainer.epoch, "rank": trainer.rank,
                 "message": f"step {step}: non-finite gradients in {len(layers)} layer(s): {', '.join(layers[:5])}",
                 "layers": layers, "total_norm": total, "action": self.on_anomaly}
        self.anomalies.append(event)
        trainer.report_error(event)
        trainer.log(f"gradient monitor: {event['message']} ({self.on_anomaly})")
        if self.on_anomaly == "skip_step":
            trainer.skip_next_step = True
        elif self.on_anomaly == "stop":
            trainer.should_stop = True

    def on_fit_end(self, trainer, result: dict) -> None:
        if not trainer.is_main or self.monitor is None or not self.monitor.steps:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.monitor.plot_gradient_flow(self.out_dir / "gradient_flow.png")
        stats = {"steps": self.monitor.steps, "layers": self.monitor.get_gradient_stats(), "anomalies": self.anomalies}
        (self.out_dir / "gradient_stats.json").write_text(json.dumps(_strict(stats), indent=2, allow_nan=False))
        result["gradient_flow"] = str(self.out_dir / "gradient_flow.png")

    def state_dict(self) -> dict:
        return {"anomalies": self.anomalies}

    def load_state_dict(self, state: dict) -> None:
        self.anomalies = list(state["anomalies"])


class TensorBoardCallback(Callback):
    """Scalars every `every` steps (read at that interval only), histograms every `histogram_every`,
    the graph and attention maps at the start and end, and the gradient-flow figure if a
    gradient-monitor listed before this callback wrote one. Sandboxed, it sees no model: scalars only."""

    def __init__(self, log_dir: Path, every: int, histogram_every: int, attention: bool, graph: bool,
                 use_wandb: bool) -> None:
        self.log_dir, self.every, self.histogram_every = log_dir, every, histogram_every
        self.attention, self.graph, self.use_wandb = attention, graph, use_wandb
        self.visualizer = None

    def _example(self, trainer):
        batch = next(iter(trainer.data.val_batches()), None) or next(iter(trainer.data.train_batches(0)))
        return batch["input_ids"][:1].to(next(trainer.model.parameters()).device)

    def on_fit_start(self, trainer) -> None:
        if not trainer.is_main:
            return
        from .visualizer import TrainingVisualizer

        try:
            self.visualizer = TrainingVisualizer(self.log_dir, self.use_wandb)
        except OSError as exc:  # what the check at build time cannot see (a read-only mount, a full disk)
            raise UserError(f"tensorboard: cannot write log_dir {self.log_dir}: {exc.strerror or exc}") from None
        if getattr(self.visualizer, "message", None):
            trainer.log(self.visualizer.message)
        trainer.log(f"TensorBoard: tensorboard --logdir {self.log_dir}")
        if trainer.model is None:
            trainer.log("tensorboard: sandboxed, it sees no model: scalars only (no graph, histograms, attention)")
            return
        if self.graph:
            self.visualizer.log_graph(trainer.model, self._example(trainer))
        if self.attention:
            self.visualizer.log_attention(trainer.model, self._example(trainer), trainer.step)

    def on_before_optimizer_step(self, trainer, step: int) -> None:
        if trainer.model is None:
            return
        if self.visualizer is not None and self.histogram_every and step % self.histogram_every == 0:
            self.visualizer.log_histograms(trainer.model, step)

    def on_train_batch_end(self, trainer, step: int, metrics: dict) -> None:
        if self.visualizer is not None and step % self.every == 0:
            values = {"loss": metrics["loss"], "lr": metrics["lr"]}
            if "tokens_per_s" in trainer.metrics:
                values["tokens_per_s"] = trainer.metrics["tokens_per_s"]
            self.visualizer.log_scalars(step, values, "train")

    def on_validation_end(self, trainer, metrics: dict) -> None:
        if self.visualizer is not None:
            self.visualizer.log_scalars(trainer.step, {"loss": metrics["val_loss"]}, "val")

    def on_fit_end(self, trainer, result: dict) -> None:
        if self.visualizer is None:
            return
        step = trainer.step
        if self.attention and trainer.model is not None:
            self.visualizer.log_attention(trainer.model, self._example(trainer), step)
        if result.get("gradient_flow"):
            self.visualizer.log_image_file("gradients/flow", Path(result["gradient_flow"]), step)
        self.visualizer.close()
        result["tensorboard"] = str(self.log_dir)

    def on_exception(self, trainer, error: BaseException) -> None:
        if self.visualizer is not None:
            self.visualizer.close()


def _strict(value):
    """JSON without NaN/Infinity (which strict parsers refuse): a non-finite number becomes null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value

"""The `gradient-monitor` callback: checks gradients every N steps, reports NaN/Inf with layer names
through the kernel's error hook, optionally skips the step or stops, and writes the flow plot and
statistics beside the checkpoints when training ends."""

from __future__ import annotations

import json
from pathlib import Path

from apt_sdk import Callback

from .gradients import GradientMonitor


class GradientMonitorCallback(Callback):
    def __init__(self, every: int, on_anomaly: str, vanishing: float, exploding: float, out_dir: Path) -> None:
        self.every, self.on_anomaly, self.out_dir = every, on_anomaly, out_dir
        self.vanishing, self.exploding = vanishing, exploding
        self.monitor: GradientMonitor | None = None
        self.anomalies: list[dict] = []

    def on_fit_start(self, trainer) -> None:
        self.monitor = GradientMonitor(trainer.model, vanishing=self.vanishing, exploding=self.exploding)

    def on_before_optimizer_step(self, trainer, step: int) -> None:
        if step % self.every:
            return
        total = self.monitor.log_gradient_norms(step)
        broken = [i for i in self.monitor.detect_gradient_anomalies() if i["kind"] in ("nan", "inf")]
        if not broken:
            return
        layers = [i["layer"] for i in broken]
        event = {"type": "NonFiniteGradients", "severity": "warning" if self.on_anomaly != "stop" else "error",
                 "global_step": step, "epoch": trainer.epoch, "rank": trainer.context.rank,
                 "message": f"step {step}: non-finite gradients in {len(layers)} layer(s): {', '.join(layers[:5])}",
                 "layers": layers, "total_norm": total, "action": self.on_anomaly}
        self.anomalies.append(event)
        trainer.context.report_error(event)
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
        (self.out_dir / "gradient_stats.json").write_text(json.dumps(stats, indent=2))
        result["gradient_flow"] = str(self.out_dir / "gradient_flow.png")

    def state_dict(self) -> dict:
        return {"anomalies": self.anomalies}

    def load_state_dict(self, state: dict) -> None:
        self.anomalies = list(state["anomalies"])

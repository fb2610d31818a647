"""Gradient health: per-layer norms, vanishing / exploding / non-finite gradients, statistics, a flow plot.

Norms of all parameters are computed in one batched call (``torch._foreach_norm``) and read back to the
host once, so a check costs one device sync however many layers the model has.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch


class GradientMonitor:
    def __init__(self, model: torch.nn.Module, logger: logging.Logger | None = None, vanishing: float = 1e-7,
                 exploding: float = 1e3) -> None:
        self.model, self.logger = model, logger or logging.getLogger("apt.gradients")
        self.vanishing, self.exploding = vanishing, exploding
        self.history: dict[str, list[float]] = {}  # layer -> norms at each logged step
        self.steps: list[int] = []
        self.last: dict[str, float] = {}

    def _norms(self) -> dict[str, float]:
        named = [(name, p.grad) for name, p in self.model.named_parameters() if p.grad is not None]
        if not named:
            return {}
        grads = [g.full_tensor() if hasattr(g, "full_tensor") else g for _, g in named]
        norms = torch.stack(torch._foreach_norm([g.float() for g in grads])).tolist()  # the one host sync
        return dict(zip([name for name, _ in named], norms, strict=True))

    def check_gradient_flow(self) -> tuple[dict[str, float], list[dict]]:
        """Per-layer gradient norms now, and the problems among them."""
        self.last = self._norms()
        return self.last, self._issues(self.last)

    def _issues(self, norms: dict[str, float]) -> list[dict]:
        issues = []
        for layer, norm in norms.items():
            if not math.isfinite(norm):
                issues.append({"layer": layer, "kind": "nan" if math.isnan(norm) else "inf", "norm": norm})
            elif norm > self.exploding:
                issues.append({"layer": layer, "kind": "exploding", "norm": norm})
            elif norm < self.vanishing:
                issues.append({"layer": layer, "kind": "vanishing", "norm": norm})
        return issues

    def log_gradient_norms(self, step: int) -> float:
        """Record this step's per-layer norms; returns the total norm (the 2-norm of all gradients)."""
        norms = self._norms()
        self.last = norms
        self.steps.append(step)
        for layer, norm in norms.items():
            self.history.setdefault(layer, []).append(norm)
        total = math.sqrt(sum(n * n for n in norms.values())) if norms else 0.0
        self.logger.debug("step %d: total gradient norm %.4g", step, total)
        return total

    def detect_gradient_anomalies(self) -> list[dict]:
        """Problems in the gradients as they are now (a NaN that appeared since the last check included)."""
        self.last = self._norms()
        return self._issues(self.last)

    def last_anomalies(self) -> list[dict]:
        """Problems in the norms just recorded by log_gradient_norms (no new read of the gradients)."""
        return self._issues(self.last)

    def get_gradient_stats(self) -> dict[str, dict[str, float]]:
        """Per layer over the logged steps: mean, std, min, max of the gradient norm."""
        stats = {}
        for layer, values in self.history.items():
            finite = [v for v in values if math.isfinite(v)] or [float("nan")]
            mean = sum(finite) / len(finite)
            std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))
            stats[layer] = {"mean": mean, "std": std, "min": min(finite), "max": max(finite)}
        return stats

    def plot_gradient_flow(self, save_path: str | Path | None = None):
        """Each layer's mean gradient norm, log scale; returns the matplotlib figure, also saved as a PNG
        at ``save_path`` when one is given."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stats = self.get_gradient_stats() or {k: {"mean": v} for k, v in self.last.items()}
        layers = list(stats)
        means = [max(stats[layer]["mean"], 1e-12) for layer in layers]
        figure, axis = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4.5))
        axis.bar(range(len(layers)), means, color="#4477aa")
        axis.axhline(self.vanishing, color="#cc6677", linestyle="--", linewidth=1, label="vanishing")
        axis.axhline(self.exploding, color="#ddaa33", linestyle="--", linewidth=1, label="exploding")
        axis.set_yscale("log")
        axis.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        axis.set_ylabel("mean gradient norm")
        axis.set_title(f"Gradient flow ({len(self.steps)} logged steps)")
        axis.legend(fontsize=7)
        figure.tight_layout()
        if save_path is not None:
            Path(save_path).parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(save_path, dpi=110)
        plt.close(figure)  # out of pyplot's registry; the figure itself stays usable (savefig, add_figure)
        return figure

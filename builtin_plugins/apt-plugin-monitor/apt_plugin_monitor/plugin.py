"""Registers the gradient monitor and TensorBoard callbacks."""

from __future__ import annotations

from pathlib import Path

from apt_sdk import BuildContext, hookimpl


def build_gradient_monitor(options: dict, context: BuildContext):
    from .callback import GradientMonitorCallback

    return GradientMonitorCallback(out_dir=context.run_dir, **options)


def build_tensorboard(options: dict, context: BuildContext):
    from .callback import TensorBoardCallback

    log_dir = options.pop("log_dir") or context.run_dir / "tensorboard"
    return TensorBoardCallback(log_dir=Path(log_dir), **options)


@hookimpl
def register_callbacks(register):
    register("gradient-monitor", build_gradient_monitor, summary="Per-layer gradient norms, anomalies, flow plot")
    register("tensorboard", build_tensorboard, summary="TensorBoard scalars, histograms, figures, attention maps")

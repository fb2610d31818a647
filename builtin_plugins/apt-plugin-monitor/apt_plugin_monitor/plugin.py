"""Registers the gradient monitor callback."""

from __future__ import annotations

from apt_sdk import BuildContext, hookimpl


def build_gradient_monitor(options: dict, context: BuildContext):
    from .callback import GradientMonitorCallback

    return GradientMonitorCallback(out_dir=context.run_dir, **options)


@hookimpl
def register_callbacks(register):
    register("gradient-monitor", build_gradient_monitor, summary="Per-layer gradient norms, anomalies, flow plot")

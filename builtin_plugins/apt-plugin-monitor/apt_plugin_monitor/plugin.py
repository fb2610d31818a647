"""Registers the gradient monitor and TensorBoard callbacks."""

from __future__ import annotations

from pathlib import Path

from apt_sdk import BuildContext, OptionError, folder_problem, hookimpl


def build_gradient_monitor(options: dict, context: BuildContext):
    from .callback import GradientMonitorCallback

    return GradientMonitorCallback(out_dir=context.run_dir, **options)


def build_tensorboard(options: dict, context: BuildContext):
    from .callback import TensorBoardCallback

    log_dir = Path(options.pop("log_dir") or context.run_dir / "tensorboard")
    if problem := folder_problem(log_dir):  # checked now, created at the start
        existing, why = problem
        raise OptionError("log_dir", f"{log_dir} cannot be created: {existing} is "
                                     f"{'not a folder' if why == 'a file' else why}")
    return TensorBoardCallback(log_dir=log_dir, **options)


@hookimpl
def register_callbacks(register):
    register("gradient-monitor", build_gradient_monitor, summary="Per-layer gradient norms, anomalies, flow plot")
    register("tensorboard", build_tensorboard, summary="TensorBoard scalars, histograms, figures, attention maps")

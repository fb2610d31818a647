"""Registers the gradient monitor and TensorBoard callbacks."""

from __future__ import annotations

import os
from pathlib import Path

from apt_sdk import BuildContext, OptionError, hookimpl


def build_gradient_monitor(options: dict, context: BuildContext):
    from .callback import GradientMonitorCallback

    return GradientMonitorCallback(out_dir=context.run_dir, **options)


def build_tensorboard(options: dict, context: BuildContext):
    from .callback import TensorBoardCallback

    log_dir = Path(options.pop("log_dir") or context.run_dir / "tensorboard")
    existing = next(p for p in (log_dir, *log_dir.parents) if p.exists())  # checked now, created at the start
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise OptionError("log_dir", f"{log_dir} cannot be created: {existing} is "
                                     f"{'not a folder' if not existing.is_dir() else 'not writable'}")
    return TensorBoardCallback(log_dir=log_dir, **options)


@hookimpl
def register_callbacks(register):
    register("gradient-monitor", build_gradient_monitor, summary="Per-layer gradient norms, anomalies, flow plot")
    register("tensorboard", build_tensorboard, summary="TensorBoard scalars, histograms, figures, attention maps")

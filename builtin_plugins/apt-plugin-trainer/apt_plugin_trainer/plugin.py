"""Registers the APT trainer."""

from __future__ import annotations

from apt_sdk import BuildContext, hookimpl


def build_trainer(options: dict, context: BuildContext):
    from .trainer import Trainer

    return Trainer(options, context)


@hookimpl
def register_trainers(register):
    register("apt-trainer", build_trainer, summary="AdamW + warmup/cosine, validation, checkpoints, callbacks")

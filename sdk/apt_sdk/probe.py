"""A pipeline that only builds encoders, for ``apt_sdk.testing``'s ``build_encoders`` fixture: its data, model,
loss and trainer are a probe's, which does nothing but hand the ``[encoders.*]`` components back. So an encoder
plugin's tests build its encoder exactly as a pipeline does (options checked against its manifest, errors named
with the pipeline's table, key and line, the result checked against ``apt_sdk.Encoder``), without depending on
any model plugin."""

from __future__ import annotations

from typing import Any

from apt_kernel.hookspecs import hookimpl

PIPELINE = """
[pipeline]
name = "encoders"

[data]
use = "probe-data"

[model]
use = "probe-model"

[loss]
use = "probe-loss"

[trainer]
use = "probe-trainer"
"""
NAME = "encoder-probe"
KINDS = {"data": "probe-data", "model": "probe-model", "loss": "probe-loss", "trainer": "probe-trainer"}
MANIFEST = {"kernel_api": "^1.0", "provides": {kind: {name: {}} for kind, name in KINDS.items()}}


class _Data:
    def steps_per_epoch(self, epoch: int) -> int:
        return 0

    def train_batches(self, epoch: int, start: int = 0) -> Any:
        return iter(())

    def val_batches(self) -> Any:
        return iter(())


class _Model:
    """What the ``Model`` protocol declares (a ``torch.nn.Module``'s members), doing nothing: it never trains."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def parameters(self) -> Any:
        return iter(())

    named_parameters = modules = parameters

    def to(self, *args: Any, **kwargs: Any) -> _Model:
        return self

    def train(self, mode: bool = True) -> _Model:
        return self

    def eval(self) -> _Model:
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class _Trainer:
    def fit(self, context: Any) -> dict:
        return {"encoders": dict(context.encoders)}


class Probe:
    """The probe plugin: register it with ``MANIFEST`` under ``NAME``."""

    @staticmethod
    @hookimpl
    def register_data(register):
        register("probe-data", lambda options, context: _Data())

    @staticmethod
    @hookimpl
    def register_models(register):
        register("probe-model", lambda options, context: _Model())

    @staticmethod
    @hookimpl
    def register_losses(register):
        register("probe-loss", lambda options, context: (lambda outputs, batch: (0.0, 1)))

    @staticmethod
    @hookimpl
    def register_trainers(register):
        register("probe-trainer", lambda options, context: _Trainer())

"""The plugin contract's hooks: what a plugin module may implement, each with ``@hookimpl``.

Read this module as the reference. A plugin is a module (or object) with hook functions and a static
manifest (``apt-plugin.toml``) that declares, before any import, every component it registers. A hook
implementation may take any subset of the spec's parameters, by name; a function named like a hook
that is not one, or a parameter a spec does not have, is refused when the plugin loads.

Registration hooks receive ``register(name, factory, summary="")``. A factory is called as
``factory(options, context)``: ``options`` is the dict of the component's validated options from
pipeline.toml, ``context`` the run's ``BuildContext``. What each factory must return is a protocol in
``apt_kernel.protocols``. Training events are not hooks: they go to ``Callback`` objects
(``apt_kernel.callbacks``). Lifecycle hook arguments are plain data, so a plugin could run elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from .kinds import KINDS, REGISTRATION_HOOKS  # noqa: F401  (re-exported: part of the contract)

hookspec = pluggy.HookspecMarker("apt_kernel")
hookimpl = pluggy.HookimplMarker("apt_kernel")

Register = Callable[..., None]
"""``register(name: str, factory: Callable[[dict, BuildContext], T], summary: str = "") -> None``"""


@hookspec
def register_data(register: Register) -> None:
    """Register data components; each factory returns a ``DataModule``.

    :param register: call ``register(name, factory, summary="")`` once per component; ``name`` must be
        declared under ``[provides.data.<name>]`` in the plugin's manifest.
    """


@hookspec
def register_encoders(register: Register) -> None:
    """Register modality encoders (image, audio, ...); each factory returns an ``Encoder``.

    :param register: as for ``register_data``; names are declared under ``[provides.encoder.<name>]``.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register models; each factory returns a ``Model`` (a ``torch.nn.Module``).

    :param register: as for ``register_data``; names are declared under ``[provides.model.<name>]``.
        A model factory may read ``context.data`` (built first), e.g. its tokenizer's vocabulary size.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register losses; each factory returns a ``Loss``: ``loss(outputs, batch) -> (sum, count)``.

    :param register: as for ``register_data``; names are declared under ``[provides.loss.<name>]``.
    """


@hookspec
def register_callbacks(register: Register) -> None:
    """Register training callbacks; each factory returns a ``Callback``.

    :param register: as for ``register_data``; names are declared under ``[provides.callback.<name>]``.
    """


@hookspec
def register_trainers(register: Register) -> None:
    """Register trainers; each factory returns a ``Trainer`` (``fit(context) -> dict``).

    :param register: as for ``register_data``; names are declared under ``[provides.trainer.<name>]``.
    """


@hookspec
def seed_everything(seed: int) -> None:
    """Seed every random number generator this plugin owns, before any component is built.

    :param seed: the pipeline's ``[pipeline] seed``.
    """


@hookspec
def pipeline_start(pipeline: dict[str, Any], run_dir: str) -> None:
    """A validated pipeline is about to build its components and train.

    :param pipeline: the pipeline as plain data, every component's options filled in.
    :param run_dir: the run's output folder (it may not exist yet).
    """


@hookspec
def error_reported(error: dict[str, Any]) -> None:
    """A non-fatal problem during a run (a skipped inf/NaN step, a bad batch, a failed sandboxed call).

    :param error: plain data: ``type``, ``message``, ``severity``, and where known ``plugin``, ``hook``,
        ``global_step``, ``epoch``, ``rank``, ``traceback``, ``pipeline``, ``run_dir``.
    """


@hookspec
def pipeline_end(pipeline: dict[str, Any], run_dir: str, result: dict[str, Any]) -> None:
    """A pipeline finished.

    :param pipeline: as in ``pipeline_start``.
    :param run_dir: the run's output folder.
    :param result: what the trainer's ``fit`` returned.
    """


@hookspec
def pipeline_error(pipeline: dict[str, Any], run_dir: str, error: dict[str, Any]) -> None:
    """A pipeline failed; it is re-raised after this hook.

    :param pipeline: as in ``pipeline_start``.
    :param run_dir: the run's output folder.
    :param error: ``type``, ``message``, ``traceback``, and ``plugin`` and ``hook`` where the error is
        attributable (a failing hook, factory or callback event).
    """

"""The plugin contract. Each hook is what a plugin may implement; read this module as the reference.

Registration hooks receive ``register(name, factory, summary="")``. A factory is called as
``factory(options, context)``: ``options`` is the plain dict of the component's validated options from
pipeline.toml, ``context`` the run's ``BuildContext``. Every name a plugin registers must be declared in
its static manifest (``apt-plugin.toml``), so the kernel knows what a plugin provides before importing it.

Per-step training events are not hooks: they go to the callback objects the pipeline selected, as
plain method calls (see ``apt_sdk.Callback``). Hook arguments are plain data so a plugin can later run
in another process.
"""

from __future__ import annotations

import pluggy

from .kinds import KINDS, REGISTRATION_HOOKS  # noqa: F401  (re-exported: part of the contract)

hookspec = pluggy.HookspecMarker("apt_kernel")
hookimpl = pluggy.HookimplMarker("apt_kernel")


@hookspec
def register_data(register):
    """Register data components (datasets, data modules): ``register(name, factory)``."""


@hookspec
def register_models(register):
    """Register model components: ``register(name, factory)``; the factory returns a model object."""


@hookspec
def register_losses(register):
    """Register loss components: ``register(name, factory)``; the factory returns a callable loss."""


@hookspec
def register_callbacks(register):
    """Register training callbacks: ``register(name, factory)``; the factory returns a Callback."""


@hookspec
def register_encoders(register):
    """Register modality encoders (image, audio, ...): ``register(name, factory)``."""


@hookspec
def register_trainers(register):
    """Register trainers: ``register(name, factory)``; the factory returns an object with ``fit(context)``."""


@hookspec
def seed_everything(seed: int):
    """Seed every random number generator this plugin owns, before any component is built."""


@hookspec
def pipeline_start(pipeline: dict, run_dir: str):
    """A validated pipeline (as a plain dict) is about to build its components and train."""


@hookspec
def error_reported(error: dict):
    """A non-fatal problem during a run (a skipped inf/NaN step, a bad batch), as plain data."""


@hookspec
def pipeline_end(pipeline: dict, run_dir: str, result: dict):
    """A pipeline finished; ``result`` is the trainer's summary (losses, checkpoint paths)."""


@hookspec
def pipeline_error(pipeline: dict, run_dir: str, error: dict):
    """A pipeline failed; ``error`` holds type, message, traceback, and the plugin and hook at fault."""

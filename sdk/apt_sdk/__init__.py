"""The SDK for APT Kernel plugins: the contract a plugin is written against, and nothing else.

- hooks: ``hookimpl`` marks a plugin's implementations of ``apt_kernel.hookspecs``;
- component protocols: ``DataModule``, ``Tokenizer``, ``Model``, ``Loss``, ``Encoder``, ``Trainer``,
  and ``TrainerState`` (what a callback sees);
- ``Callback`` (subclass it) and ``EVENTS``, the training events;
- ``BuildContext``: a factory's second argument, ``factory(options, context)``;
- errors: ``UserError`` (exit 2, no traceback), ``OptionError`` (a bad option, reported with the pipeline's
  file and line), ``PipelineError``, ``RunInterrupted``, and ``PluginError``: a plugin's hook, factory or
  callback raised (``CallbackError`` is its name of SDK 0.1.0-0.1.2);
- ``run_pipeline`` / ``check_pipeline``: run or validate a pipeline from Python;
- ``check_known_keys``: refuse a misspelt key of a dict the user wrote, naming the key it resembles;
- ``folder_problem``: why a folder option cannot be written (a file in the way, no write permission);
- ``RunReader``: a run folder read as ``--resume`` reads it (checkpoints, ``metadata.json``, ``pipeline.json``,
  ``model/``), the one reader of the layout ``apt_sdk.run_folder`` documents;
- ``start_loader`` and ``loader_worker_init``: start a DataLoader's workers so a stop signal to the process
  group lets the step finish and save instead of killing the loader's workers under it.

Test helpers for plugin authors are in ``apt_sdk.testing`` (pytest fixtures ``apt_kernel``, ``run_pipeline``).
An encoder's helpers, not imported here (they need torch or transformers): ``apt_sdk.encoders``
(``EncoderModule``, ``EncoderConfig``, ``encoder_record``/``rebuild_encoder``) and ``apt_sdk.pretrained`` (a
``transformers`` model from a folder, a hub id or a preset config).
For a command that runs an HTTP server: ``apt_sdk.http`` (``check_address``, the ``BodyLimit`` ASGI middleware).
"""

from apt_kernel import KERNEL_API_VERSION
from apt_kernel.callbacks import EVENTS, Callback, CallbackError
from apt_kernel.context import BuildContext
from apt_kernel.errors import OptionError, PipelineError, PluginError, RunInterrupted, UserError
from apt_kernel.hookspecs import hookimpl
from apt_kernel.protocols import Batch, DataModule, Encoder, Loss, Model, Tokenizer, Trainer, TrainerState

from .options import check_known_keys, folder_problem
from .run_folder import RunReader
from .workers import loader_worker_init, start_loader

__all__ = [
    "EVENTS", "KERNEL_API_VERSION", "Batch", "BuildContext", "Callback", "CallbackError", "DataModule", "Encoder",
    "Loss", "Model", "OptionError",
    "PipelineError", "PluginError", "RunInterrupted", "RunReader", "Tokenizer", "Trainer", "TrainerState", "UserError",
    "check_known_keys", "check_pipeline", "folder_problem", "hookimpl", "loader_worker_init", "run_pipeline",
    "start_loader",
]


def __getattr__(name: str):
    # the runner pulls in the pipeline schema (pydantic): imported when a plugin first runs a pipeline, not
    # by every plugin command that only needs UserError
    if name in ("run_pipeline", "check_pipeline"):
        from apt_kernel import api

        return getattr(api, name)
    raise AttributeError(f"module 'apt_sdk' has no attribute {name!r}")

"""``train_multimodal_model``: the original one-call API, as a pipeline of the same components
``apt-kernel run`` uses (this plugin's ``multimodal`` data and ``multimodal-apt`` model, the LM's loss,
apt-trainer), so checkpoints, exact resume and callbacks are the kernel's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from apt_sdk import PipelineError, UserError, run_pipeline

from .warn import plain_warnings

# the pipeline's keys that are arguments of train_multimodal_model itself
ARGUMENTS = {"data.train_manifest": "data_list", "data.train_records": "data_list", "data.val_manifest": "val_data",
             "data.val_records": "val_data", "data.test_manifest": "test_data", "data.test_records": "test_data",
             "data.batch_size": "batch_size", "trainer.epochs": "epochs", "trainer.learning_rate": "learning_rate",
             "trainer.resume_from": "resume_from", "pipeline.seed": "seed", "pipeline.output_dir": "checkpoint_dir"}
# the command line's advice, as a Python caller follows it
FLAGS = ((r" \(resume_from=\.\.\. in Python\)", ""), (r"--resume (latest|\S+\.pt)\b", r"resume_from='\1'"),
         (r"--resume\b", "resume_from"), (r"--overwrite\b", "overwrite=True"), (r"\boutput_dir\b", "checkpoint_dir"))


class ArgumentError(UserError, ValueError):
    """A wrong argument of ``train_multimodal_model``: a ``ValueError`` to a Python caller, a one-line error
    (exit 2) to a command that calls it."""


class Trained(tuple):
    """``(model, tokenizer, config)``, as the original API returned them, and the run's numbers: ``result`` (the
    trainer's, ``test_accuracy`` among them when there was ``test_data``; also in the run's ``metadata.json``)."""

    result: dict

    def __new__(cls, model: Any, tokenizer: Any, config: Any, result: dict) -> Trained:
        trained = super().__new__(cls, (model, tokenizer, config))
        trained.result = result
        return trained

    @property
    def test_accuracy(self) -> float | None:
        """Exact match of the generated answers on ``test_data`` (None without it)."""
        return self.result.get("test_accuracy")


def _argument(table: str, key: str | None) -> str:
    """``[data] image_size`` as the Python caller spells it: ``data['image_size']``, or the argument itself."""
    table = table.strip("[]").replace("[", ".").rstrip("]")
    if key is None:
        return table
    dotted = f"{table}.{key}"
    if dotted in ARGUMENTS:
        return ARGUMENTS[dotted]
    head, _, index = table.partition(".")
    return f"{head}[{index}][{key!r}]" if index else f"{table}[{key!r}]"


def _for_python(error: UserError) -> str:
    """The pipeline's error with the names a Python caller used (arguments, not tables and command-line flags)."""
    if isinstance(error, PipelineError) and error.location:
        table, _, key = error.location.partition(" ")
        message = f"{_argument(table, key.split(' ')[0] or None)}: {error.detail}"
    else:
        message = str(error)
    message = re.sub(r"\[(\w+)\] (\w+)(?= = )", lambda m: _argument(m[1], m[2]), message)  # "[trainer] precision = "
    for flag, argument in FLAGS:
        message = re.sub(flag, argument, message)
    return message


def _source(data: list[dict] | str | Path, name: str) -> dict:
    """A manifest path, or records with their media paths made absolute (the run must find them on resume)."""
    if isinstance(data, str | Path):
        return {f"{name}_manifest": str(data)}
    argument = ARGUMENTS[f"data.{name}_records"]
    if not isinstance(data, list | tuple) or not data:
        raise ArgumentError(f"{argument} must be a non-empty list of records or a manifest path, got {data!r:.60}")
    records = []
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise ArgumentError(f"{argument}[{index}]: a record is a dict with a 'text', got {type(record).__name__}")
        records.append({k: str(Path(v).resolve()) if k in ("image_path", "audio_path") and v is not None else v
                        for k, v in record.items()})
    return {f"{name}_records": records}


def train_multimodal_model(data_list: list[dict] | str | Path, epochs: int = 10, batch_size: int = 8,
                           checkpoint_dir: str | Path = "apt_multimodal_checkpoints", *,
                           val_data: list[dict] | str | Path | None = None,
                           test_data: list[dict] | str | Path | None = None, learning_rate: float = 1e-3,
                           data: dict | None = None, model: dict | None = None, trainer: dict | None = None,
                           callbacks: list[dict] | None = None, seed: int = 0,
                           resume_from: str | Path | None = None, overwrite: bool = False, logger: Any = None,
                           progress: bool = False) -> Trained:
    """Train a ``MultimodalAPTModel`` on records ``{"text", "prompt"?, "image_path"?, "audio_path"?}`` and
    return ``(model, tokenizer, config)`` (a ``Trained`` tuple: its ``result`` holds the run's numbers).

    :param data_list: the training records, or the path of a JSONL manifest.
    :param val_data: validation records or manifest (the validation loss each epoch).
    :param test_data: held-out records or manifest: the exact-match accuracy of generated answers is
        measured after training (``multimodal-accuracy``), logged, returned (``.test_accuracy``) and recorded
        in the run's ``metadata.json``.
    :param data: / model / trainer: extra options of the ``multimodal`` data, the ``multimodal-apt``
        model and ``apt-trainer`` (e.g. ``data={"image_size": 32}``, ``model={"d_model": 256}``).
    :param checkpoint_dir: the run folder (checkpoints, ``metadata.json``, the exported ``model/``); one
        that holds another run is refused unless ``overwrite=True`` moves it aside.
    :param resume_from: ``"latest"``, a checkpoint file or a glob: continue the run in ``checkpoint_dir``.
    """
    sources = _source(data_list, "train")
    for records, name in ((val_data, "val"), (test_data, "test")):
        if records is not None:
            sources.update(_source(records, name))
    extra_callbacks = list(callbacks or [])
    if test_data is not None and not any(c.get("use") == "multimodal-accuracy" for c in extra_callbacks):
        extra_callbacks.append({"use": "multimodal-accuracy"})
    pipeline = {
        "pipeline": {"name": "train_multimodal_model", "seed": seed, "output_dir": str(checkpoint_dir)},
        "data": {"use": "multimodal", "batch_size": batch_size, "num_workers": 0, **sources, **(data or {})},
        "model": {"use": "multimodal-apt", **(model or {})},
        "loss": {"use": "lm-cross-entropy"},
        "trainer": {"use": "apt-trainer", "epochs": epochs, "learning_rate": learning_rate, **(trainer or {})},
        "callbacks": extra_callbacks,
    }
    log = None if logger is None else (logger.info if hasattr(logger, "info") else logger)
    try:
        with plain_warnings():
            result, context = run_pipeline(pipeline, progress=progress, log=log, overwrite=overwrite,
                                           resume=str(resume_from) if resume_from is not None else None)
    except ArgumentError:
        raise
    except UserError as exc:
        raise ArgumentError(_for_python(exc)) from None
    return Trained(context.model, context.data.tokenizer, context.model.config, result)

"""``train_multimodal_model``: the original one-call API, as a pipeline of the same components
``apt-kernel run`` uses (this plugin's ``multimodal`` data and ``multimodal-apt`` model, the LM's loss,
apt-trainer), so checkpoints, exact resume and callbacks are the kernel's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apt_sdk import UserError, run_pipeline


def _source(data: list[dict] | str | Path, name: str) -> dict:
    """A manifest path, or records with their media paths made absolute (the run must find them on resume)."""
    if isinstance(data, str | Path):
        return {f"{name}_manifest": str(data)}
    if not isinstance(data, list | tuple) or not data:
        raise UserError(f"{name} data must be a non-empty list of records or a manifest path, got {data!r:.60}")
    records = []
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise UserError(f"{name} record {index}: a record is a dict with a 'text', got {type(record).__name__}")
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
                           progress: bool = False) -> tuple[Any, Any, Any]:
    """Train a ``MultimodalAPTModel`` on records ``{"text", "prompt"?, "image_path"?, "audio_path"?}`` and
    return ``(model, tokenizer, config)``.

    :param data_list: the training records, or the path of a JSONL manifest.
    :param val_data: validation records or manifest (the validation loss each epoch).
    :param test_data: held-out records or manifest: the exact-match accuracy of generated answers is
        measured after training (``multimodal-accuracy``) and logged.
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
    _, context = run_pipeline(pipeline, progress=progress, log=log, overwrite=overwrite,
                              resume=str(resume_from) if resume_from is not None else None)
    return context.model, context.data.tokenizer, context.model.config

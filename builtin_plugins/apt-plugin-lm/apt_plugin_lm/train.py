"""``train_model``: the original one-call API, built as a pipeline of the same plugins ``apt-kernel run`` uses
(this plugin's data, model and loss; the ``apt-trainer`` and ``early-stopping`` of apt-plugin-trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apt_sdk import run_pipeline


def _check_texts(texts: Any) -> None:
    # a string is iterable and would be read as one text per character: say so instead
    if isinstance(texts, str | bytes) or not isinstance(texts, list | tuple):
        raise TypeError(f"texts must be a list of strings, not {type(texts).__name__}"
                        + ("; wrap a single text as [text]" if isinstance(texts, str | bytes) else ""))
    if not texts:
        raise ValueError("texts is an empty list: give at least one training text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r}); texts must be strings")


def _log_to(logger: Any):
    if logger is None:
        return None
    return logger.info if hasattr(logger, "info") else logger


def train_model(epochs: int = 3, batch_size: int = 8, learning_rate: float = 1e-3,
                checkpoint_dir: str | Path = "apt_checkpoints", texts: list[str] | None = None,
                tokenizer: str | Any | None = None, *, resume_from: str | Path | None = None,
                temp_checkpoint_freq: int = 100, save_path: str | Path | None = None, logger: Any = None,
                overwrite: bool = False, block_size: int = 64, seed: int = 0,
                model: dict | None = None, trainer: dict | None = None, callbacks: list[dict] | None = None,
                early_stopping: dict | bool = True, enable_gradient_monitoring: bool = False,
                progress: bool = False) -> tuple[Any, Any, Any]:
    """Train an APT language model and return ``(model, tokenizer, config)``.

    ``texts`` is a list of training strings (default: the embedded stdlib corpus). ``tokenizer`` is
    ``"char"`` (default), ``"bpe"``, a local tokenizer folder, or a tokenizer object with ``save(dir)``.
    ``model`` / ``trainer`` hold extra options of the ``apt-lm`` model and ``apt-trainer``. Early stopping
    on the validation loss is on (patience 3); pass ``early_stopping=False`` or its options. Checkpoints,
    ``metadata.json`` and the exported model land in ``checkpoint_dir``.

    ``resume_from`` continues a run in ``checkpoint_dir``: ``"latest"``, a checkpoint file or a glob such
    as ``"out/checkpoints/apt_model_epoch2_*.pt"``; ``epochs`` counts from the start of the run, so 6
    after a 3-epoch run trains epochs 3-5. ``temp_checkpoint_freq`` saves the whole state to ``temp/``
    every N steps (0: never; removed after a clean finish). ``save_path`` also saves the trained model
    (``save_pretrained``) and tokenizer there. ``logger`` receives the log lines (a ``logging.Logger`` or
    a callable). A ``checkpoint_dir`` that holds another run is refused unless ``overwrite=True`` moves
    it aside.
    """
    if texts is not None:
        _check_texts(texts)
    checkpoint_dir = Path(checkpoint_dir)
    if tokenizer is not None and not isinstance(tokenizer, str | Path):
        saved = checkpoint_dir / "tokenizer"
        tokenizer.save(saved)  # components take plain data: pass the object as its saved folder
        tokenizer = str(saved)
    data: dict[str, Any] = {"use": "text", "tokenizer": str(tokenizer or "char"), "batch_size": batch_size,
                            "block_size": block_size}
    if texts is not None:
        data["texts"] = list(texts)
    else:
        data.update(corpus="python-stdlib-docs", max_chars=200_000)
    pipeline = {
        "pipeline": {"name": "train_model", "seed": seed, "output_dir": str(checkpoint_dir)},
        "data": data,
        "model": {"use": "apt-lm", **(model or {})},
        "loss": {"use": "lm-cross-entropy"},
        "trainer": {"use": "apt-trainer", "epochs": epochs, "learning_rate": learning_rate,
                    "temp_checkpoint_freq": temp_checkpoint_freq, **(trainer or {})},
        "callbacks": list(callbacks or []),
    }
    if enable_gradient_monitoring:  # needs apt-plugin-monitor installed
        pipeline["callbacks"].append({"use": "gradient-monitor", "every": 1})
    if early_stopping:
        options = early_stopping if isinstance(early_stopping, dict) else {}
        pipeline["callbacks"].append({"use": "early-stopping", **options})
    _, context = run_pipeline(pipeline, progress=progress, log=_log_to(logger),
                              resume=str(resume_from) if resume_from is not None else None, overwrite=overwrite)
    if save_path is not None:
        context.model.save_pretrained(save_path)
        context.data.tokenizer.save(Path(save_path) / "tokenizer")
    return context.model, context.data.tokenizer, context.model.config

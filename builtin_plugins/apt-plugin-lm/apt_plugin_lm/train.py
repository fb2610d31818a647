"""``train_model``: the original one-call API, built as a pipeline of the same plugins ``apt-kernel run`` uses
(this plugin's data, model and loss; the ``apt-trainer`` and ``early-stopping`` of apt-plugin-trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apt_sdk import run_pipeline


def train_model(epochs: int = 3, batch_size: int = 8, learning_rate: float = 1e-3,
                checkpoint_dir: str | Path = "apt_checkpoints", texts: list[str] | None = None,
                tokenizer: str | Any | None = None, *, block_size: int = 64, seed: int = 0,
                model: dict | None = None, trainer: dict | None = None, callbacks: list[dict] | None = None,
                early_stopping: dict | bool = True, enable_gradient_monitoring: bool = False,
                progress: bool = False) -> tuple[Any, Any, Any]:
    """Train an APT language model and return ``(model, tokenizer, config)``.

    ``texts`` is a list of training strings (default: the embedded stdlib corpus). ``tokenizer`` is
    ``"char"`` (default), ``"bpe"``, a local tokenizer folder, or a tokenizer object with ``save(dir)``.
    ``model`` / ``trainer`` hold extra options of the ``apt-lm`` model and ``apt-trainer``. Early stopping
    on the validation loss is on (patience 3); pass ``early_stopping=False`` or its options. Checkpoints,
    ``metadata.json`` and the exported model land in ``checkpoint_dir``.
    """
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
        "trainer": {"use": "apt-trainer", "epochs": epochs, "learning_rate": learning_rate, **(trainer or {})},
        "callbacks": list(callbacks or []),
    }
    if enable_gradient_monitoring:  # needs apt-plugin-monitor installed
        pipeline["callbacks"].append({"use": "gradient-monitor", "every": 1})
    if early_stopping:
        options = early_stopping if isinstance(early_stopping, dict) else {}
        pipeline["callbacks"].append({"use": "early-stopping", **options})
    _, context = run_pipeline(pipeline, progress=progress)
    return context.model, context.data.tokenizer, context.model.config

"""The ``multimodal-accuracy`` callback: when training ends, generate an answer for every record of the
held-out manifest and score it: exact match of the whole answer (also per ``kind`` and per ``question``
when records carry them, as Sort-of-CLEVR's relational and non-relational questions and its six question
types do), or object-level F1 of captions.
The numbers join the run's result and its summary."""

from __future__ import annotations

from collections import defaultdict

import torch

from apt_sdk import Callback

from .dataset import MultimodalDataset, create_multimodal_dataloader
from .sort_of_clevr import object_f1


def score(dataset: MultimodalDataset, model, metric: str = "exact", batch_size: int = 64,
          max_new_tokens: int = 16, num_workers: int = 0) -> dict[str, float]:
    """``{"accuracy": .., "accuracy_<kind>": .., "accuracy_<question>": .., "examples": n}``, with
    ``"object_f1"`` for captions."""
    device = next(model.parameters()).device
    right: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    counts = [0, 0, 0]  # objects right, predicted, true (captions)
    loader = create_multimodal_dataloader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    for index, batch in enumerate(loader):
        records = dataset.records[index * batch_size:(index + 1) * batch_size]
        media = {key: batch[key].to(device) for key in ("image", "image_present", "image_index", "audio", "audio_mask")
                 if key in batch}
        answers = model.generate_batch([r.prompt for r in records], max_length=max_new_tokens, **media)
        for record, answer in zip(records, answers, strict=True):
            if metric == "object-f1":
                counts = [a + b for a, b in zip(counts, object_f1(answer, record.text), strict=True)]
            for group in ("all", record.extra.get("kind"), record.extra.get("question")):
                if group is not None:
                    seen[group] += 1
                    right[group] += answer.strip() == record.text.strip()
    result: dict[str, float] = {"examples": seen["all"], "accuracy": right["all"] / seen["all"]}
    result.update({f"accuracy_{k}": right[k] / seen[k] for k in seen if k != "all"})
    if metric == "object-f1":
        result["object_f1"] = 2 * counts[0] / (counts[1] + counts[2]) if counts[1] + counts[2] else 0.0
    return result


class MultimodalAccuracy(Callback):
    def __init__(self, metric: str, split: str, max_new_tokens: int, batch_size: int) -> None:
        self.metric, self.split = metric, split
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def on_fit_start(self, trainer) -> None:
        if trainer.model is None:
            trainer.log("multimodal-accuracy: a sandboxed callback sees no model or data, so it scores nothing; "
                        "run it in-process (sandbox = false)")

    def on_fit_end(self, trainer, result: dict) -> None:
        if trainer.model is None:
            return
        datasets = trainer.data.datasets  # checked when the callback was built
        if not trainer.is_main:  # rank 0 scores for everyone
            return
        model = trainer.context.model
        with torch.autocast(model.nothing.device.type, enabled=False):
            scores = score(datasets[self.split], model, self.metric, self.batch_size, self.max_new_tokens,
                           trainer.data.num_workers)
        n = scores["examples"]
        shown = [(f"{self.split} accuracy", f"{scores['accuracy']:.2%} of {n} (exact match)")]
        shown += [(f"  {k.removeprefix('accuracy_')}", f"{v:.2%}") for k, v in scores.items()
                  if k.startswith("accuracy_")]
        if "object_f1" in scores:
            shown.insert(0, (f"{self.split} object F1", f"{scores['object_f1']:.2%} of {n} captions"))
        result.update({f"{self.split}_{k}": v for k, v in scores.items()})
        result.setdefault("summary", []).extend(shown)
        trainer.log("; ".join(f"{label.strip()} {text}" for label, text in shown))

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
    ``"object_f1"`` for captions. A question named like a kind is ``"accuracy_<question> (question)"``:
    the two are counted apart."""
    device = next(model.parameters()).device
    right: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    counts = [0, 0, 0]  # objects right, predicted, true (captions)
    kinds = _groups(dataset.records)[0]
    loader = create_multimodal_dataloader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    for index, batch in enumerate(loader):
        records = dataset.records[index * batch_size:(index + 1) * batch_size]
        media = {key: value.to(device) for key, value in batch.items()
                 if key.startswith(("image", "audio"))}  # the media, their masks, presence and image_index
        answers = model.generate_batch([r.prompt for r in records], max_length=max_new_tokens, **media)
        for record, answer in zip(records, answers, strict=True):
            if metric == "object-f1":
                counts = [a + b for a, b in zip(counts, object_f1(answer, record.text), strict=True)]
            for key in ("accuracy", *_keys(record, kinds)):
                seen[key] += 1
                right[key] += answer.strip() == record.text.strip()
    result: dict[str, float] = {"examples": seen["accuracy"]}
    result.update({key: right[key] / seen[key] for key in seen})
    if metric == "object-f1":
        result["object_f1"] = 2 * counts[0] / (counts[1] + counts[2]) if counts[1] + counts[2] else 0.0
    return result


def accuracy_lines(scores: dict[str, float], records: list) -> list[tuple[str, str]]:
    """``score``'s per-kind and per-question accuracies as (label, value) lines, in the records' order: each
    kind, with the questions asked only under it indented below it; other questions after the kinds."""
    kinds, questions = _groups(records)
    nested: dict[str | None, list[str]] = {kind: [] for kind in kinds}
    nested[None] = []
    for question, under in questions.items():
        nested[next(iter(under)) if len(under) == 1 else None].append(question)
    lines = []
    for kind, asked in nested.items():
        if kind is not None:
            lines.append((f"  {kind}", f"{scores[f'accuracy_{kind}']:.2%}"))
        indent = "    " if kind is not None else "  "
        keys = [_question_key(question, kinds) for question in asked]
        lines += [(f"{indent}{key.removeprefix('accuracy_')}", f"{scores[key]:.2%}") for key in keys]
    return lines


def _groups(records: list) -> tuple[dict[str, None], dict[str, set[str | None]]]:
    """The kinds, and each question with the kinds it is asked under (None: records without a kind)."""
    kinds: dict[str, None] = {}
    questions: dict[str, set[str | None]] = defaultdict(set)
    for record in records:
        kind, question = record.extra.get("kind"), record.extra.get("question")
        if kind is not None:
            kinds[kind] = None
        if question is not None:
            questions[question].add(kind)
    return kinds, questions


def _question_key(question: str, kinds: dict[str, None]) -> str:
    return f"accuracy_{question} (question)" if question in kinds else f"accuracy_{question}"


def _keys(record, kinds: dict[str, None]) -> list[str]:
    kind, question = record.extra.get("kind"), record.extra.get("question")
    return ([f"accuracy_{kind}"] if kind is not None else []) + (
        [_question_key(question, kinds)] if question is not None else [])


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
        model = trainer.model  # the model itself (RunState gives the context's, not a DDP wrapper)
        with torch.autocast(model.nothing.device.type, enabled=False):
            scores = score(datasets[self.split], model, self.metric, self.batch_size, self.max_new_tokens,
                           trainer.data.num_workers)
        n = scores["examples"]
        shown = [(f"{self.split} accuracy", f"{scores['accuracy']:.2%} of {n} (exact match)")]
        shown += accuracy_lines(scores, datasets[self.split].records)
        if "object_f1" in scores:
            shown.insert(0, (f"{self.split} object F1", f"{scores['object_f1']:.2%} of {n} captions"))
        result.update({f"{self.split}_{k}": v for k, v in scores.items()})
        result.setdefault("summary", []).extend(shown)
        trainer.log("; ".join(f"{label.strip()} {text}" for label, text in shown))

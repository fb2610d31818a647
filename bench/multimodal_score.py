"""Score a trained multimodal model (a run folder, its ``model/`` or a checkpoint file) on a manifest, the way
the ``multimodal-accuracy`` callback does at the end of a run (exact match of the greedy answer), broken down
by every ``kind`` and ``question`` the records carry: what docs/multimodal.md's per-question tables come from.
The media are preprocessed by the model's own encoders (their ``preprocessor``, as the run's batches were: CLIP's,
Whisper's or a plugin's) and the text is cut at the decoder's ``max_seq_len``, so a model copied out of its run
folder scores the same; ``--max-length`` overrides the latter.

    .venv/bin/python bench/multimodal_score.py runs/multimodal-sort-of-clevr data/sort-of-clevr/test.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch

from apt_plugin_multimodal.dataset import MultimodalDataset
from apt_plugin_multimodal.evaluate import accuracy_lines, score
from apt_plugin_multimodal.model import MultimodalAPTModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, its model/ folder, or a checkpoint file")
    parser.add_argument("manifest", help="a JSONL manifest (media paths relative to it)")
    parser.add_argument("--max-length", type=int, help="data.max_length (default: the model's)")
    parser.add_argument("--metric", choices=["exact", "object-f1"], default="exact")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=720)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = MultimodalAPTModel.from_pretrained(args.model).eval()
    max_length = args.max_length or model.apt_config.max_seq_len
    encoders = ", ".join(f"{media} {type(encoder).__name__}" for media, encoder in (("image", model.vision),
                                                                                     ("audio", model.audio)) if encoder)
    print(f"max_length {max_length} (the model's, unless given); media preprocessed by the model's encoders: "
          f"{encoders}")
    data = MultimodalDataset(args.manifest, model.tokenizer, model.vision, model.audio, max_length=max_length)
    start = time.perf_counter()
    scores = score(data, model, args.metric, args.batch_size, args.max_new_tokens)
    print(f"{args.manifest}: {scores.pop('examples'):,} examples in {time.perf_counter() - start:.0f} s")
    shown = [("accuracy", f"{scores['accuracy']:.2%}")]
    shown += [("object F1", f"{scores['object_f1']:.2%}")] if "object_f1" in scores else []
    for label, value in shown + accuracy_lines(scores, data.records):
        print(f"  {label:22s} {value}")


if __name__ == "__main__":
    main()

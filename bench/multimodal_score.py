"""Score a trained multimodal model (a run folder, its ``model/`` or a checkpoint file) on a manifest, the way
the ``multimodal-accuracy`` callback does at the end of a run (exact match of the greedy answer), broken down
by every ``kind`` and ``question`` the records carry: what docs/multimodal.md's per-question tables come from.
The data options (image size, text length, audio window) are the model's own: its vision tower's image size,
its decoder's ``max_seq_len`` and its audio window, which the multimodal model plugin requires to equal the run's
``[data]`` options, so a model copied out of its run folder scores the same; a flag overrides one.

    .venv/bin/python bench/multimodal_score.py runs/multimodal-sort-of-clevr data/sort-of-clevr/test.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch

from apt_plugin_multimodal.dataset import MultimodalDataset
from apt_plugin_multimodal.evaluate import accuracy_lines, score
from apt_plugin_multimodal.model import MultimodalAPTModel
from apt_plugin_vision import ImagePreprocessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, its model/ folder, or a checkpoint file")
    parser.add_argument("manifest", help="a JSONL manifest (media paths relative to it)")
    parser.add_argument("--image-size", type=int, help="data.image_size (default: the model's)")
    parser.add_argument("--max-audio-seconds", type=float, help="data.max_audio_seconds (default: the model's)")
    parser.add_argument("--max-length", type=int, help="data.max_length (default: the model's)")
    parser.add_argument("--metric", choices=["exact", "object-f1"], default="exact")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=720)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = MultimodalAPTModel.from_pretrained(args.model).eval()
    image_size = args.image_size or (model.vision.preprocessor.image_size if model.vision is not None else None)
    max_length = args.max_length or model.apt_config.max_seq_len
    seconds = args.max_audio_seconds or (model.audio.max_seconds if model.audio is not None else None)
    print(", ".join(f"{name} {value}" for name, value in (("image_size", image_size), ("max_length", max_length),
                                                          ("max_audio_seconds", seconds)) if value)
          + " (the model's, unless given)")
    audio = None
    if seconds:
        from apt_plugin_audio import AudioPreprocessor

        audio = AudioPreprocessor.for_window(seconds)
    images = ImagePreprocessor.for_size(image_size) if image_size else None  # as the data plugin builds it
    data = MultimodalDataset(args.manifest, model.tokenizer, images, audio, max_length=max_length)
    start = time.perf_counter()
    scores = score(data, model, args.metric, args.batch_size, args.max_new_tokens)
    print(f"{args.manifest}: {scores.pop('examples'):,} examples in {time.perf_counter() - start:.0f} s")
    shown = [("accuracy", f"{scores['accuracy']:.2%}")]
    shown += [("object F1", f"{scores['object_f1']:.2%}")] if "object_f1" in scores else []
    for label, value in shown + accuracy_lines(scores, data.records):
        print(f"  {label:22s} {value}")


if __name__ == "__main__":
    main()

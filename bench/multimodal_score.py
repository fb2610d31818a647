"""Score a trained multimodal model (a run folder, its ``model/`` or a checkpoint file) on a manifest, the way
the ``multimodal-accuracy`` callback does at the end of a run (exact match of the greedy answer), broken down
by every ``kind`` and ``question`` the records carry: what docs/multimodal.md's per-question tables come from.

    .venv/bin/python bench/multimodal_score.py runs/multimodal-sort-of-clevr data/sort-of-clevr/test.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch

from apt_plugin_multimodal.dataset import MultimodalDataset
from apt_plugin_multimodal.evaluate import score
from apt_plugin_multimodal.model import MultimodalAPTModel
from apt_plugin_vision import ImagePreprocessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, its model/ folder, or a checkpoint file")
    parser.add_argument("manifest", help="a JSONL manifest (media paths relative to it)")
    parser.add_argument("--image-size", type=int, default=75, help="the pipeline's data.image_size")
    parser.add_argument("--max-audio-seconds", type=float, help="the pipeline's data.max_audio_seconds, for audio")
    parser.add_argument("--max-length", type=int, default=64, help="the pipeline's data.max_length")
    parser.add_argument("--metric", choices=["exact", "object-f1"], default="exact")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=720)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = MultimodalAPTModel.from_pretrained(args.model).eval()
    audio = None
    if args.max_audio_seconds is not None:
        from apt_plugin_audio import AudioPreprocessor

        audio = AudioPreprocessor.for_window(args.max_audio_seconds)
    data = MultimodalDataset(args.manifest, model.tokenizer, ImagePreprocessor.for_size(args.image_size), audio,
                             max_length=args.max_length)
    start = time.perf_counter()
    scores = score(data, model, args.metric, args.batch_size, args.max_new_tokens)
    print(f"{args.manifest}: {scores.pop('examples'):,} examples in {time.perf_counter() - start:.0f} s")
    for name, value in scores.items():
        print(f"  {name.removeprefix('accuracy_'):20s} {value:.2%}")


if __name__ == "__main__":
    main()

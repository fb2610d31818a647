"""Score a trained multimodal model (a run folder, its ``model/`` or a checkpoint file) on a manifest, the way
the ``multimodal-accuracy`` callback does at the end of a run (exact match of the greedy answer), broken down
by every ``kind`` and ``question`` the records carry: what docs/multimodal.md's per-question tables come from.
The data options (image size, text length, audio window) are the run's own, from its ``pipeline.json``; a flag
overrides one, and a model saved outside a run folder needs them as flags (else the pipeline's defaults).

    .venv/bin/python bench/multimodal_score.py runs/multimodal-sort-of-clevr data/sort-of-clevr/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from apt_kernel.rundir import RECORD
from apt_plugin_multimodal.dataset import MultimodalDataset
from apt_plugin_multimodal.evaluate import score
from apt_plugin_multimodal.model import MultimodalAPTModel
from apt_plugin_vision import ImagePreprocessor


def recorded_data_options(model: Path) -> tuple[dict, Path | None]:
    """The ``data`` options of the run ``model`` belongs to (a run folder, its ``model/``, or a checkpoint in
    its ``checkpoints/`` or ``temp/``) and the ``pipeline.json`` they come from; ``({}, None)`` outside a run."""
    model = model.resolve()
    for folder in (model, *model.parents[:2]):
        if (folder / RECORD).is_file():
            return json.loads((folder / RECORD).read_text()).get("data", {}), folder / RECORD
    return {}, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder, its model/ folder, or a checkpoint file")
    parser.add_argument("manifest", help="a JSONL manifest (media paths relative to it)")
    parser.add_argument("--image-size", type=int, help="data.image_size (default: the run's, else 75)")
    parser.add_argument("--max-audio-seconds", type=float, help="data.max_audio_seconds (default: the run's)")
    parser.add_argument("--max-length", type=int, help="data.max_length (default: the run's, else 64)")
    parser.add_argument("--metric", choices=["exact", "object-f1"], default="exact")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=720)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = MultimodalAPTModel.from_pretrained(args.model).eval()
    recorded, source = recorded_data_options(Path(args.model))
    image_size = args.image_size or recorded.get("image_size", 75)
    max_length = args.max_length or recorded.get("max_length", 64)
    seconds = args.max_audio_seconds or (recorded.get("max_audio_seconds") if model.audio is not None else None)
    options = f"image_size {image_size}, max_length {max_length}"
    options += f", max_audio_seconds {seconds}" if seconds else ""
    print(options + (f" (unless given, from {source})" if source else ""))
    audio = None
    if seconds:
        from apt_plugin_audio import AudioPreprocessor

        audio = AudioPreprocessor.for_window(seconds)
    data = MultimodalDataset(args.manifest, model.tokenizer, ImagePreprocessor.for_size(image_size), audio,
                             max_length=max_length)
    start = time.perf_counter()
    scores = score(data, model, args.metric, args.batch_size, args.max_new_tokens)
    print(f"{args.manifest}: {scores.pop('examples'):,} examples in {time.perf_counter() - start:.0f} s")
    for name, value in scores.items():
        print(f"  {name.removeprefix('accuracy_'):20s} {value:.2%}")


if __name__ == "__main__":
    main()

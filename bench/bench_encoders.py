"""Encoder throughput: our ``encode_batch`` against calling transformers directly on the same inputs.

- images/s: ``VisionEncoder.encode_batch(images)`` (opening checks, RGB, CLIP preprocessing, the tower)
  vs ``CLIPImageProcessor`` + ``CLIPVisionModelWithProjection`` on the same PIL images and weights;
- seconds of audio per second: ``AudioEncoder.encode_batch(clips)`` vs ``WhisperFeatureExtractor`` +
  ``WhisperEncoder`` on the same 16 kHz arrays and weights, with a 30 s window (Whisper's) and a 5 s
  one; then what fitting ``max_seconds`` to 5 s clips saves;
- preprocessing in DataLoader workers: the training process's time per image batch when two workers
  preprocess (it only runs the tower) vs preprocessing in the training process.

The two sides alternate within each round; ratios are medians over rounds of the per-round ratios.

``--decode`` measures what reading a large file costs, the way it was (decoded in full) and the way it is,
each read in a fresh process (peak resident memory above the process's after its imports, and the time of
the read), medians of ``--rounds`` processes each:

- the first second of a 30-minute 44.1 kHz stereo WAV: ``librosa.load`` of the whole file then the window,
  against decoding only the window (``AudioPreprocessor``); the features must be identical;
- a 9400x9400 PNG for a 64-pixel tower: decoded and carried at full size to the CLIP processor, against
  reduced right after decoding (``ImagePreprocessor``); the difference in grey levels is printed;
- an epoch of 300 one-second 8 kHz clips read through ``MultimodalDataset``: decoded at every read, against
  the features kept from the media check.

    python bench/bench_encoders.py [--rounds 7] [--size base]
    python bench/bench_encoders.py --decode [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import WhisperFeatureExtractor

from apt_plugin_audio import AudioEncoder
from apt_plugin_vision import VisionEncoder


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(ours, direct, rounds: int) -> tuple[float, float, list[float]]:
    ours(), direct()  # warm-up
    t_ours, t_direct = [], []
    for _ in range(rounds):
        t_ours.append(timed(ours))
        t_direct.append(timed(direct))
    ratios = [a / b for a, b in zip(t_ours, t_direct, strict=True)]
    return statistics.median(t_ours), statistics.median(t_direct), ratios


def report(label: str, unit: str, amount: float, ours: float, direct: float, ratios: list[float]) -> None:
    print(f"{label:<34} ours {amount / ours:9.1f} {unit}   transformers {amount / direct:9.1f} {unit}   "
          f"time ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


class _Collate:
    def __init__(self, preprocessor):
        self.preprocessor = preprocessor

    def __call__(self, images):
        return self.preprocessor(images)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--decode", action="store_true", help="large files: whole decode against the window")
    parser.add_argument("--read", help=argparse.SUPPRESS)  # a child process's one measured read
    args = parser.parse_args()
    if args.read:
        from bench_decode import read_once

        read_once(*args.read.split(":", 1))
        return
    if args.decode:
        from bench_decode import decode

        decode(args.rounds)
        return
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.size}, {args.rounds} rounds")

    vision = VisionEncoder(size=args.size)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(args.images)]
    processor = vision.preprocessor.processor

    def direct_images():
        with torch.no_grad():
            return vision.model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).image_embeds

    ours, direct, ratios = compare(lambda: vision.encode_batch(images), direct_images, args.rounds)
    report(f"vision {args.images} x 320x240 RGB", "img/s", args.images, ours, direct, ratios)

    clips = [(0.1 * rng.standard_normal(16_000 * 5)).astype(np.float32) for _ in range(args.clips)]
    seconds = 5.0 * args.clips
    encoders = {}
    for max_seconds in (30, 5):
        audio = encoders[max_seconds] = AudioEncoder(size=args.size, max_seconds=max_seconds)
        extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=max_seconds)

        def direct_audio(audio=audio, extractor=extractor):
            features = extractor(clips, sampling_rate=16_000, return_tensors="pt")["input_features"]
            with torch.no_grad():
                return audio.encoder(features).last_hidden_state

        ours, direct, ratios = compare(lambda audio=audio: audio.encode_batch(clips), direct_audio, args.rounds)
        report(f"audio {args.clips} x 5 s, {max_seconds} s window", "audio s/s", seconds, ours, direct, ratios)
    fitted, full, ratios = compare(lambda: encoders[5].encode_batch(clips), lambda: encoders[30].encode_batch(clips),
                                   args.rounds)
    print(f"{'the same clips, max_seconds 5 vs 30':<34} {seconds / fitted:9.1f} vs {seconds / full:9.1f} audio s/s   "
          f"time ratio median {statistics.median(ratios):.3f}")

    # the training process's share: batches preprocessed by two workers vs in the training process
    batches = [images] * 4

    def in_process():
        for batch in batches:
            vision.encode_batch(batch)

    loader = torch.utils.data.DataLoader(batches * (args.rounds + 2), batch_size=None, num_workers=2,
                                         collate_fn=_Collate(vision.preprocessor), prefetch_factor=4,
                                         persistent_workers=True)
    worker_batches = iter(loader)
    next(worker_batches)

    def from_workers():
        for _ in batches:
            pixels = next(worker_batches)  # ready: the workers preprocessed it while the tower ran
            vision(pixels)

    ours, direct, ratios = compare(from_workers, in_process, args.rounds - 1)
    print(f"{'training process per image batch':<34} workers preprocess {ours / len(batches) * 1e3:7.1f} ms   "
          f"in-process {direct / len(batches) * 1e3:7.1f} ms   ratio median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

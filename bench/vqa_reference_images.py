"""Sort-of-CLEVR reference, trained by image: each step takes 32 images and all 36 questions about each,
so the CNN runs on 32 images for 1,152 answers. A diagnosis harness, not the product: plain PyTorch, the
question as one learned vector per question (no text), on the same images as
``pipelines/multimodal-sort-of-clevr.toml``.

    apt-kernel multimodal prepare sort-of-clevr --out /tmp/clevr --train-images 4000 --test-images 200
    python bench/vqa_reference_images.py /tmp/clevr --norm group --seconds 420
    python bench/vqa_reference_images.py /tmp/clevr --norm batch --seconds 420

The model: the relation-network paper's stem (four stride-2 3x3 convolutions, 32 channels) with two
coordinate channels, projected to 64 wide; two transformer encoder layers over the 25 cells; the 36
question vectors read them through two transformer decoder layers (a question does not see the others).
Prints held-out accuracy per question type every 250 steps. Results are in docs/multimodal.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

QUESTIONS = 36


def load(folder: Path, manifest: str) -> tuple[list[dict], torch.Tensor]:
    """Records (36 per image, in the generator's order) and the images as uint8 ``[N, 3, 75, 75]``."""
    records = [json.loads(line) for line in (folder / manifest).read_text().splitlines()]
    paths = [records[i]["image_path"] for i in range(0, len(records), QUESTIONS)]
    if any(r["image_path"] != paths[i // QUESTIONS] for i, r in enumerate(records)):
        raise SystemExit(f"{manifest}: expected 36 consecutive records per image")
    pixels = np.stack([np.asarray(Image.open(folder / p).convert("RGB")) for p in paths])
    return records, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


class ByImage(nn.Module):
    def __init__(self, answers: int, norm: str, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(3 if i == 0 else 32, 32, 3, 2, 1),
                       nn.BatchNorm2d(32) if norm == "batch" else nn.GroupNorm(4, 32), nn.ReLU()]
        self.stem = nn.Sequential(*layers)
        line = torch.linspace(-1, 1, 5)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        self.register_buffer("xy", torch.stack([cols.flatten(), rows.flatten()], -1))
        self.project = nn.Linear(32 + 2, width)
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(width, 4, 4 * width, 0.0, batch_first=True,
                                                                norm_first=True) for _ in range(2))
        self.questions = nn.Parameter(torch.randn(QUESTIONS, width) * 0.5)
        self.decoder = nn.ModuleList(nn.TransformerDecoderLayer(width, 4, 4 * width, 0.0, batch_first=True,
                                                                norm_first=True) for _ in range(2))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, answers))
        self.register_buffer("alone", torch.full((QUESTIONS, QUESTIONS), float("-inf")).fill_diagonal_(0.0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, 3, 75, 75]`` -> logits ``[B, 36, answers]``."""
        cells = self.stem((pixels.float() / 255 - 0.5) / 0.25).flatten(2).transpose(1, 2)
        memory = self.project(torch.cat([cells, self.xy.expand(len(pixels), -1, -1)], -1))
        for layer in self.encoder:
            memory = layer(memory)
        query = self.questions.expand(len(pixels), -1, -1)
        for layer in self.decoder:
            query = layer(query, memory, tgt_mask=self.alone)
        return self.head(query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="output of apt-kernel multimodal prepare sort-of-clevr")
    parser.add_argument("--norm", choices=["group", "batch"], default="group")
    parser.add_argument("--images", type=int, default=32, help="images per step (x 36 questions)")
    parser.add_argument("--seconds", type=float, default=420.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, train_pixels = load(args.folder, "train.jsonl")
    test, test_pixels = load(args.folder, "test.jsonl")
    prompts = [r["prompt"] for r in train[:QUESTIONS]]
    words = sorted({r["text"] for r in train})
    kinds = [p.split(" ", 1)[1].strip() for p in prompts]

    def answers(records: list[dict]) -> torch.Tensor:
        return torch.tensor([words.index(r["text"]) for r in records]).view(-1, QUESTIONS)

    train_answers, test_answers = answers(train), answers(test)
    model = ByImage(len(words), args.norm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    draw = torch.Generator().manual_seed(0)
    start, step = time.perf_counter(), 0
    while True:
        batch = torch.randint(0, len(train_pixels), (args.images,), generator=draw)
        loss = F.cross_entropy(model(train_pixels[batch]).flatten(0, 1), train_answers[batch].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step % 250 == 0 or elapsed > args.seconds:
            model.eval()
            with torch.no_grad():
                guess = torch.cat([model(test_pixels[i:i + 100]).argmax(-1) for i in range(0, len(test_pixels), 100)])
            model.train()
            right: dict[str, list[float]] = {}
            for kind, score in zip(kinds, (guess == test_answers).float().mean(0).tolist(), strict=True):
                right.setdefault(kind, []).append(score)
            scores = "  ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in right.items())
            print(f"step {step:5d}  loss {loss.item():.3f}  {scores}  {elapsed:.0f} s", flush=True)
        if elapsed > args.seconds:
            break
        step += 1


if __name__ == "__main__":
    main()

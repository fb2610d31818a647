"""Is Sort-of-CLEVR VQA learnable by small attention models from scratch, and how fast? A diagnosis
harness, not the product: plain PyTorch reference models on the same images and questions as
``pipelines/multimodal-sort-of-clevr.toml``, with the question given as one learned vector (no text
decoder at all), answered by one attention read-out over the image's tokens.

    apt-kernel multimodal prepare sort-of-clevr --out /tmp/clevr --train-images 4000 --test-images 100
    python bench/vqa_reference.py /tmp/clevr --tower patches --position random --steps 6000
    python bench/vqa_reference.py /tmp/clevr --tower patches --position coordinates --steps 6000
    python bench/vqa_reference.py /tmp/clevr --tower cnn --steps 3000
    python bench/vqa_reference.py /tmp/clevr --tower cnn-mlp --lr 1e-4 --steps 6000

Prints held-out accuracy per question type every fifth of the run. Results are in docs/multimodal.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from apt_plugin_vision import ImagePreprocessor


def load(folder: Path, manifest: str, limit: int) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    records = [json.loads(line) for line in (folder / manifest).read_text().splitlines()[:limit]]
    paths = sorted({r["image_path"] for r in records})
    index = {p: i for i, p in enumerate(paths)}
    preprocess = ImagePreprocessor.for_size(75)
    pixels = torch.cat([preprocess([folder / p for p in paths[i:i + 500]]) for i in range(0, len(paths), 500)])
    return records, pixels, torch.tensor([index[r["image_path"]] for r in records])


class Reference(nn.Module):
    """Image tokens (linear 15 px patches or a 4-layer CNN, 5x5 either way) + positions -> 2 transformer
    layers; the question's vector attends to them; an MLP answers."""

    def __init__(self, tower: str, position: str, questions: int, answers: int, width: int = 64) -> None:
        super().__init__()
        if tower == "cnn":  # the relation-network paper's stem: stride-2 3x3 convolutions
            layers: list[nn.Module] = []
            for i in range(4):
                layers += [nn.Conv2d(3 if i == 0 else 32, 32, 3, 2, 1), nn.GroupNorm(4, 32), nn.ReLU()]
            self.stem = nn.Sequential(*layers, nn.Conv2d(32, width, 1))
        else:
            self.stem = nn.Conv2d(3, width, 15, 15)
        grid = torch.linspace(-1, 1, 5)
        rows, cols = torch.meshgrid(grid, grid, indexing="ij")
        self.register_buffer("xy", torch.stack([cols.flatten(), rows.flatten()], -1))
        # "random": a learned table (std 1); "coordinates": a learned linear map of (x, y), so position
        # is a monotonic feature from the first step
        self.coordinates = nn.Linear(2, width) if position == "coordinates" else None
        self.table = nn.Parameter(torch.randn(25, width)) if position == "random" else None
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, 0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.question = nn.Embedding(questions, width)
        self.read = nn.MultiheadAttention(width, 4, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                  nn.Linear(2 * width, answers))

    def forward(self, pixels: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(pixels).flatten(2).transpose(1, 2)
        where = self.table if self.coordinates is None else self.coordinates(self.xy) * 3
        memory = self.encoder(tokens + where)
        query = self.question(question)[:, None]
        read, _ = self.read(query, memory, memory)
        return self.head(read[:, 0] + query[:, 0])


class Baseline(nn.Module):
    """The relation-network paper's CNN+MLP baseline: no attention, the flattened 5x5 CNN map and the
    question's vector into an MLP."""

    def __init__(self, questions: int, answers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(3 if i == 0 else 24, 24, 3, 2, 1), nn.ReLU(), nn.BatchNorm2d(24)]
        self.cnn = nn.Sequential(*layers)
        self.question = nn.Embedding(questions, 64)
        self.mlp = nn.Sequential(nn.Linear(24 * 25 + 64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, answers))

    def forward(self, pixels: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.cnn(pixels).flatten(1), self.question(question)], 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="output of apt-kernel multimodal prepare sort-of-clevr")
    parser.add_argument("--tower", choices=["patches", "cnn", "cnn-mlp"], default="patches",
                        help="cnn-mlp: the paper's attention-free baseline (train it with --lr 1e-4)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--position", choices=["random", "coordinates"], default="random")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--test-images", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, train_pixels, train_image = load(args.folder, "train.jsonl", 10**9)
    test, test_pixels, test_image = load(args.folder, "test.jsonl", 36 * args.test_images)
    prompts, words = sorted({r["prompt"] for r in train}), sorted({r["text"] for r in train})

    def encode(records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor([prompts.index(r["prompt"]) for r in records]),
                torch.tensor([words.index(r["text"]) for r in records]))

    train_q, train_a = encode(train)
    test_q, test_a = encode(test)
    model = Baseline(len(prompts), len(words)) if args.tower == "cnn-mlp" else \
        Reference(args.tower, args.position, len(prompts), len(words))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0 if args.tower == "cnn-mlp" else 0.01)
    start = time.perf_counter()
    for step in range(args.steps + 1):
        batch = torch.randint(0, len(train), (64,))
        loss = F.cross_entropy(model(train_pixels[train_image[batch]], train_q[batch]), train_a[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0:
            model.eval()
            with torch.no_grad():
                predicted = torch.cat([model(test_pixels[test_image[i:i + 400]], test_q[i:i + 400]).argmax(-1)
                                       for i in range(0, len(test), 400)])
            model.train()
            right: dict[str, list[bool]] = {}
            for record, ok in zip(test, (predicted == test_a).tolist(), strict=True):
                right.setdefault(record["prompt"].split(" ", 1)[1].strip(), []).append(ok)
            scores = "  ".join(f"{q} {sum(v) / len(v):.2f}" for q, v in right.items())
            print(f"step {step:5d}  loss {loss.item():.3f}  {scores}  {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""The CPU race of issue 14 (goal 7): `pipelines/shakespeare-char.toml` within its own 5-minute budget
against nanoGPT's CPU "baby" configuration given the same wall time, back to back on this machine.

    .venv/bin/python bench/race_nanogpt_cpu.py --nanogpt PATH/TO/nanoGPT \
        --data ../shared/data/tinyshakespeare/input.txt [--budget 300] [--set trainer.max_steps=...]

- nanoGPT runs unmodified from a copy of its source (`--nanogpt`, a checkout of karpathy/nanoGPT): its
  `data/shakespeare_char/prepare.py` on this input.txt, then `train.py config/train_shakespeare_char.py`
  with its README's CPU settings (4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0,
  eval_iters 20). `max_iters = lr_decay_iters` is stretched so the run takes the budget: two calibration
  runs (20 and 150 iterations) measure its time per iteration first.
- APT runs `apt-kernel run pipelines/shakespeare-char.toml` (`--set` overrides go to it only) with
  `max_steps` stretched the same way, so its cosine schedule ends at the budget on this machine: the
  file's 2,200 steps took 306 s on this VM one day and 190 s on another. `--as-is` runs the file
  unchanged.
- Both are then scored by this script, the same way: mean cross-entropy per character over the whole
  validation split (the last 10% of the text, nanoGPT's split) in non-overlapping 64-character windows,
  each model's best-validation weights (nanoGPT's `ckpt.pt`, APT's exported `model/`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
BABY = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
        "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
WINDOW = 64


def val_text(data: Path) -> str:
    text = data.read_text()
    return text[int(len(text) * 0.9):]  # nanoGPT's prepare.py: the last 10%


@torch.no_grad()
def score(forward, ids: torch.Tensor) -> float:
    """Mean cross-entropy per character over non-overlapping windows of the id stream."""
    count = (len(ids) - 1) // WINDOW
    inputs = ids[: count * WINDOW].view(count, WINDOW)
    targets = ids[1: count * WINDOW + 1].view(count, WINDOW)
    total = 0.0
    for start in range(0, count, 256):
        logits = forward(inputs[start:start + 256])
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets[start:start + 256].flatten(),
                                 reduction="sum").item()
    return total / (count * WINDOW)


def nanogpt_tree(source: Path, data: Path, work: Path) -> Path:
    """A copy of nanoGPT's source with this input.txt, prepared by its own prepare.py."""
    tree = work / "nanoGPT"
    shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git"))
    shutil.copy(data, tree / "data" / "shakespeare_char" / "input.txt")
    subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=tree, check=True, capture_output=True)
    return tree


def nanogpt_train(tree: Path, settings: list[str]) -> tuple[float, str]:
    """`train.py config/train_shakespeare_char.py` with ``settings``; (wall seconds, stdout)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", *settings],
                          cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"nanoGPT's train.py failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.monotonic() - started, done.stdout


def nanogpt_score(tree: Path, data: Path, out: str, device: str = "cpu") -> dict:
    """nanoGPT's best checkpoint (its ckpt.pt) scored on the whole validation split, with its own model.py."""
    checkpoint = torch.load(tree / out / "ckpt.pt", map_location=device, weights_only=False)
    sys.path.insert(0, str(tree))
    from model import GPT, GPTConfig  # nanoGPT's own model.py

    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
    model.to(device).eval()
    meta = pickle.loads((tree / "data" / "shakespeare_char" / "meta.pkl").read_bytes())
    ids = torch.tensor([meta["stoi"][c] for c in val_text(data)], device=device)
    # nanoGPT's forward gives the logits of every position only when it is given targets
    loss = score(lambda x: model(x, torch.zeros_like(x))[0], ids)
    return {"best_iter": checkpoint["iter_num"], "its_own_val": float(checkpoint["best_val_loss"]),
            "val_whole_split": loss}


def run_nanogpt(source: Path, data: Path, work: Path, budget: float) -> dict:
    tree = nanogpt_tree(source, data, work)

    def train(iters: int, out: str) -> tuple[float, str]:
        return nanogpt_train(tree, [*BABY, f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--out_dir={out}"])

    # two short runs: their difference is the time of 130 iterations, start-up and the first eval cancel
    # (not 100: nanoGPT's schedule divides by lr_decay_iters - warmup_iters, 100)
    short, _ = train(20, "calibration-20")
    long, _ = train(150, "calibration-150")
    per_iter = (long - short) / 130
    startup = short - 20 * per_iter
    evals = 1.0 + 2 * 20 / 250  # eval every 250 iterations: 2 x 20 forward batches
    # a multiple of eval_interval (250), rounded up: nanoGPT saves its checkpoint only when it evaluates,
    # and rounding down gave it less than the budget
    iters = max(250, math.ceil((budget - startup) / (per_iter * evals) / 250) * 250)
    seconds, log = train(iters, "out")
    return {"seconds": seconds, "iters": iters, **nanogpt_score(tree, data, "out"),
            "ms_per_iter": per_iter * 1000, "log_tail": log.splitlines()[-3:]}


def shakespeare_run(data: Path, out: Path, overrides: list[str],
                    pipeline: str = "shakespeare-char.toml") -> tuple[float, float, str]:
    """`apt-kernel run pipelines/<pipeline>` into ``out``; (its start as time.time(), wall seconds, stdout)."""
    args = [sys.executable, "-m", "apt_kernel.cli", "run", str(REPO / "pipelines" / pipeline),
            "--no-progress", "--set", f"data.path={data}", "--set", f"pipeline.output_dir={out}"]
    for override in overrides:
        args += ["--set", override]
    started, clock = time.time(), time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"apt-kernel run {' '.join(overrides)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return started, time.monotonic() - clock, done.stdout


def steps_in_budget(data: Path, work: Path, budget: float, overrides: list[str]) -> int:
    """The pipeline's steps that fill ``budget`` seconds of wall time on this machine, with ``overrides``:
    two runs (30 and 330 steps) timed by the trainer's own training seconds; their difference is 300
    steps with one validation and checkpoint, as the real run has every 250."""
    measured = {}
    for steps in (30, 330):
        _, wall, stdout = shakespeare_run(data, work / f"calibration-{steps}",
                                          [*overrides, f"trainer.max_steps={steps}", "trainer.epochs=1000"])
        measured[steps] = (wall, float(re.search(r"^\s+seconds\s+([\d.]+)", stdout, re.M).group(1)))
    per_step = (measured[330][1] - measured[30][1]) / 300
    startup = measured[30][0] - 30 * per_step
    return max(330, math.floor((budget - startup) / per_step))


def run_apt(data: Path, work: Path, overrides: list[str], pipeline: str = "shakespeare-char.toml",
            name: str = "apt") -> dict:
    out = work / name
    _, seconds, stdout = shakespeare_run(data, out, overrides, pipeline)
    from apt_plugin_lm.model import APTLargeModel
    from apt_plugin_lm.tokenization import load_tokenizer

    model = APTLargeModel.from_pretrained(out / "model").eval()
    tokenizer = load_tokenizer(out / "model" / "tokenizer")
    ids = torch.tensor(tokenizer.encode(val_text(data)))
    steps = int(re.search(r"steps\s+([\d,]+)", stdout).group(1).replace(",", ""))
    best = re.search(r"the best validation: step (\d+)", stdout)
    return {"seconds": seconds, "steps": steps, "best_step": int(best.group(1)) if best else None,
            "train_seconds": float(re.search(r"seconds\s+([\d.]+)", stdout).group(1)),
            "its_own_val": float(re.search(r"best val loss\s+([\d.]+)", stdout).group(1)),
            "val_whole_split": score(lambda x: model(x), ids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of nanoGPT's run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="an override of the APT run")
    parser.add_argument("--only", choices=["apt", "nanogpt"], help="one side only (when tuning it)")
    parser.add_argument("--as-is", action="store_true", help="APT with the pipeline's own max_steps")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results = {}
        if args.only != "nanogpt":
            overrides = args.overrides
            if not args.as_is:
                steps = steps_in_budget(args.data.resolve(), work, args.budget, overrides)
                overrides = [*overrides, f"trainer.max_steps={steps}", "trainer.epochs=1000"]
            results["apt"] = run_apt(args.data.resolve(), work, overrides)
            print("apt", json.dumps(results["apt"]), flush=True)
        if args.only != "apt":
            results["nanogpt"] = run_nanogpt(args.nanogpt, args.data.resolve(), work, args.budget)
            print("nanogpt", json.dumps(results["nanogpt"]), flush=True)
    print(f"\n{'run':<10}{'seconds':>9}{'steps':>8}{'whole-split val':>17}")
    for name, result in results.items():
        print(f"{name:<10}{result['seconds']:>9.0f}{result.get('steps', result.get('iters')):>8}"
              f"{result['val_whole_split']:>17.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

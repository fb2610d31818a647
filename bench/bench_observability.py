"""Overhead of watching training: the trainer with `gradient-monitor` and `tensorboard` at their default
intervals against the same trainer without them. Alternating rounds; ratios of mean step times (the
mean, not the median, so work done every N steps counts), median over rounds.

    python bench/bench_observability.py [--rounds 5] [--steps 120]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import trainer_steps  # noqa: E402

WATCHERS = [{"use": "gradient-monitor"}, {"use": "tensorboard"}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    plain, watched, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            base = statistics.mean(trainer_steps(args.steps, Path(tmp) / f"plain{r}")[1].step_times)
            seen = statistics.mean(trainer_steps(args.steps, Path(tmp) / f"watched{r}", WATCHERS)[1].step_times)
            plain.append(base)
            watched.append(seen)
            ratios.append(seen / base)
    print(f"{args.rounds} rounds x {args.steps} steps; gradient-monitor every 50, tensorboard scalars every 10, "
          "histograms every 200")
    print(f"trainer alone              mean step {statistics.median(plain) * 1000:8.2f} ms")
    print(f"with monitor + tensorboard mean step {statistics.median(watched) * 1000:8.2f} ms")
    print(f"ratio: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()

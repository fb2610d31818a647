"""The GPU race of issue 14 (goal 5, and goal 8's GPU half): `pipelines/shakespeare-char-gpu.toml`
against nanoGPT's own `train.py config/train_shakespeare_char.py`, unmodified (its GPU configuration:
6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2, 5,000 iterations, compiled, bf16), on
the same machine in the same run of this script.

    python bench/race_nanogpt_gpu.py --nanogpt PATH/TO/nanoGPT [--data input.txt] [--attention-race]

- Goal 5: APT reaches val <= 1.47 on the whole validation split in less wall time than nanoGPT.
- ``--attention-race`` (goal 8 on the GPU): the same pipeline with ``attention = "sdpa"``, given the
  autopoietic run's training seconds as its ``max_time_minutes``: which attention is better at equal time.
- Every model is scored the same way (`race_nanogpt_cpu.score`): best-validation weights, mean
  cross-entropy per character over the whole validation split (last 10%), non-overlapping 64-character
  windows. Wall time is each command's, start-up and compilation included.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from race_nanogpt_cpu import REPO, nanogpt_score, nanogpt_train, nanogpt_tree, run_apt

PIPELINE = "shakespeare-char-gpu.toml"
TARGET = 1.47


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT (required unless --only apt)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="an override of the APT runs")
    parser.add_argument("--only", choices=["apt", "nanogpt"], help="one side only")
    parser.add_argument("--attention-race", action="store_true", help="also SDPA in the autopoietic run's time")
    args = parser.parse_args()
    data = args.data.resolve()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.only != "nanogpt":
            results["apt"] = run_apt(data, work, args.overrides, PIPELINE)
            print("apt", json.dumps(results["apt"]), flush=True)
        if args.only != "apt":
            if args.nanogpt is None:
                parser.error("--nanogpt is required to run nanoGPT's side")
            tree = nanogpt_tree(args.nanogpt, data, work)
            seconds, log = nanogpt_train(tree, ["--out_dir=out"])
            results["nanogpt"] = {"seconds": seconds, "iters": 5000, **nanogpt_score(tree, data, "out", "cuda"),
                                  "log_tail": log.splitlines()[-3:]}
            print("nanogpt", json.dumps(results["nanogpt"]), flush=True)
        if args.attention_race and "apt" in results:
            minutes = results["apt"]["train_seconds"] / 60
            results["apt sdpa"] = run_apt(data, work, [*args.overrides, "model.attention='sdpa'",
                                                       f"trainer.max_time_minutes={minutes:.4f}"], PIPELINE, "sdpa")
            print("apt sdpa", json.dumps(results["apt sdpa"]), flush=True)
    print(f"\n{'run':<10}{'wall s':>8}{'train s':>9}{'steps':>7}{'whole-split val':>17}")
    for name, result in results.items():
        print(f"{name:<10}{result['seconds']:>8.0f}{result.get('train_seconds', float('nan')):>9.0f}"
              f"{result.get('steps', result.get('iters')):>7}{result['val_whole_split']:>17.4f}")
    if "apt" in results and "nanogpt" in results:
        apt, ref = results["apt"], results["nanogpt"]
        met = apt["val_whole_split"] <= TARGET and apt["seconds"] < ref["seconds"]
        print(f"goal 5: APT {apt['val_whole_split']:.4f} in {apt['seconds']:.0f} s vs nanoGPT "
              f"{ref['val_whole_split']:.4f} in {ref['seconds']:.0f} s: {'met' if met else 'not met'}")
    if "apt sdpa" in results:
        auto, sdpa = results["apt"]["val_whole_split"], results["apt sdpa"]["val_whole_split"]
        print(f"goal 8 (GPU): autopoietic {auto:.4f} vs sdpa {sdpa:.4f} in the same training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

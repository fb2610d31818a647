"""Issue 14, goal 8: does the autopoietic refinement earn its cost? `pipelines/shakespeare-char.toml` with
`attention = "sdpa"` and with `attention = "autopoietic"`, each given the same wall time, back to back.

    .venv/bin/python bench/race_attention_cpu.py [--data ../shared/data/tinyshakespeare/input.txt]
        [--budget 300] [--seed 1337] [--json results.json] [--compile] [--set model.tau_min=0.5]

- Equal wall time is set in steps: SDPA gets the steps that fill the budget (two calibration runs, 30 and
  330 steps, timed by the trainer's own training seconds), autopoietic those divided by the two models'
  step-time ratio, measured first in one process in alternating rounds. Back-to-back 5-minute runs on
  this VM drift by 10% or more, so each run's own clock would decide the race; the wall times are
  printed beside. Each side gets a whole warm-up + cosine schedule (a time limit alone would cut the
  slower side's schedule short); `trainer.epochs` is lifted so steps, not the 5-epoch cap, end a run.
  `trainer.max_time_minutes` stays as a guard at 1.2 x the budget.
- `--compile` runs the autopoietic side compiled (`trainer.compile = true`): on CPU, Inductor fuses the
  refinement's elementwise work, and SDPA is fastest eager. A model-only ratio cannot see what compiling
  costs a real run (the compilation, validation on the eager model), so the autopoietic side is then
  calibrated like SDPA, by its own two runs; the ratio is still printed.
- Both are scored the same way as in `race_nanogpt_cpu.py`: mean cross-entropy per character over the
  whole validation split (the last 10%) in non-overlapping 64-character windows, on the exported
  best-validation `model/`, and every checkpoint is scored too, which gives each side's curve of
  whole-split loss against wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from race_nanogpt_cpu import REPO, score, shakespeare_run, steps_in_budget, val_text  # noqa: E402  shared

MODES = ("sdpa", "autopoietic")


def run(data: Path, out: Path, mode: str, steps: int, budget: float, seed: int,
        extra: tuple[str, ...] = ()) -> tuple[float, float, str]:
    return shakespeare_run(data, out, [*extra, f"model.attention={mode}", f"pipeline.seed={seed}",
                                       f"trainer.max_steps={steps}", "trainer.epochs=1000",  # steps decide
                                       f"trainer.max_time_minutes={budget * 1.2 / 60:.3f}"])


def step_ratio(rounds: int, compile_autopoietic: bool = False) -> tuple[list[float], float]:
    """Autopoietic / SDPA training-step time for the pipeline's model and batch, alternating in one process
    (as bench_attention.py): back-to-back 5-minute runs on this VM drift by 10% or more, so equal wall
    time is set by this ratio rather than by each run's own clock. Also the seconds the first three
    autopoietic steps took beyond three ordinary ones: its compilation, with ``compile_autopoietic``."""
    from apt_plugin_lm.model import APTConfig, APTLargeModel

    pipeline = tomllib.loads((REPO / "pipelines" / "shakespeare-char.toml").read_text())
    shape = {k: v for k, v in pipeline["model"].items() if k not in ("use", "attention")}
    batch, block = pipeline["data"]["batch_size"], pipeline["data"]["block_size"]
    ids = torch.randint(0, 65, (batch, block + 1))
    sides = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = APTLargeModel(APTConfig(vocab_size=65, max_seq_len=block, attention=mode, **shape))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sides[mode] = (torch.compile(model) if compile_autopoietic and mode == "autopoietic" else model, optimizer)

    def steps(mode: str, count: int) -> float:
        model, optimizer = sides[mode]
        started = time.perf_counter()
        for _ in range(count):
            logits = model(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    warm_up = {mode: steps(mode, 3) for mode in MODES}
    ratios, autopoietic_step = [], []
    for _ in range(rounds):
        times = {mode: steps(mode, 20) for mode in MODES}
        ratios.append(times["autopoietic"] / times["sdpa"])
        autopoietic_step.append(times["autopoietic"] / 20)
    return ratios, max(0.0, warm_up["autopoietic"] - 3 * statistics.median(autopoietic_step))


def race(mode: str, steps: int, data: Path, work: Path, budget: float, seed: int, extra: tuple[str, ...] = ()) -> dict:
    from apt_plugin_lm.model import APTLargeModel
    from apt_plugin_lm.tokenization import load_tokenizer
    from apt_sdk import RunReader

    out = work / mode
    started, seconds, _ = run(data, out, mode, steps, budget, seed, extra)
    tokenizer = load_tokenizer(out / "model" / "tokenizer")
    ids = torch.tensor(tokenizer.encode(val_text(data)))
    model = APTLargeModel.from_pretrained(out / "model").eval()
    curve = []
    folder = RunReader(out)  # the run folder, read as --resume reads it
    for entry in folder.checkpoints():
        state = folder.read(folder.checkpoints_dir / entry["file"])
        at = APTLargeModel.from_config(state["config"])
        at.load_state_dict(state["model_state_dict"])
        at.eval()
        curve.append({"step": entry["global_step"], "seconds": round(entry["time"] - started, 1),
                      "its_own_val": entry["metrics"].get("val_loss"), "val_whole_split": score(at, ids)})
    tau = [round(float(p.detach().clamp(model.config.tau_min, model.config.tau_max)), 3)
           for name, p in model.named_parameters() if name.endswith(".tau")]
    gate = [round(float(p.detach()), 3) for name, p in model.named_parameters() if name.endswith(".gate")]
    return {"mode": mode, "steps": steps, "seconds": round(seconds, 1), "val_whole_split": score(model, ids),
            "curve": curve, "gate": gate, "tau": tau}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of each run")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--sdpa-steps", type=int, help="skip the calibration: SDPA's steps in the budget")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds of the step-time ratio")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="an override of the autopoietic run only (e.g. model.tau_min=0.5)")
    parser.add_argument("--compile", action="store_true", help="the autopoietic side compiled (trainer.compile)")
    args = parser.parse_args()
    data = args.data.resolve()
    if args.compile:
        args.overrides.append("trainer.compile=true")
    ratios, compile_seconds = step_ratio(args.rounds, args.compile)
    ratio = statistics.median(ratios)
    print(f"autopoietic / sdpa step time: median {ratio:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
          f"{args.rounds} rounds)" + (f"; compilation {compile_seconds:.1f} s" if args.compile else ""), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        guard = f"trainer.max_time_minutes={args.budget * 1.2 / 60:.3f}"
        sdpa_steps = args.sdpa_steps or steps_in_budget(data, Path(folder), args.budget,
                                                        ["model.attention=sdpa", f"pipeline.seed={args.seed}", guard])
        autopoietic_steps = round(sdpa_steps / ratio)
        if args.compile:
            autopoietic_steps = steps_in_budget(data, Path(folder) / "calibration-autopoietic", args.budget, [
                *args.overrides, "model.attention=autopoietic", f"pipeline.seed={args.seed}", guard])
        for mode, steps in (("sdpa", sdpa_steps), ("autopoietic", autopoietic_steps)):
            extra = tuple(args.overrides) if mode == "autopoietic" else ()
            results[mode] = race(mode, steps, data, Path(folder), args.budget, args.seed, extra)
            print(mode, json.dumps({k: v for k, v in results[mode].items() if k != "curve"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"ratio": ratios, "compile_seconds": compile_seconds, **results}, indent=2))
    print(f"\nseed {args.seed}, budget {args.budget:.0f} s, step-time ratio {ratio:.3f}, autopoietic overrides "
          f"{args.overrides or 'none'}")
    print(f"{'attention':<13}{'steps':>8}{'seconds':>9}{'whole-split val':>17}")
    for mode, result in results.items():
        print(f"{mode:<13}{result['steps']:>8}{result['seconds']:>9.0f}{result['val_whole_split']:>17.4f}")
    print("\ncurves (whole-split val of every checkpoint, seconds since the run started)")
    for mode, result in results.items():
        print(f"{mode:<13}" + "  ".join(f"{p['seconds']:.0f}s {p['val_whole_split']:.3f}" for p in result["curve"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

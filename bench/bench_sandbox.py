"""The sandbox's costs: a warm call round trip with a small payload, a 16 MiB tensor to the worker and
back, a worker's cold start (no torch in it), and training with one sandboxed callback against the
same callback in-process. Medians of repeats.

    python bench/bench_sandbox.py [--calls 2000] [--repeats 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from apt_kernel.runner import run_pipeline
from apt_kernel.sandbox.host import SandboxLimits, SandboxWorker

EXEC = {"mode": "exec", "allowed_imports": None, "plugin": {"name": "bench"}}
PIPELINE = {
    "pipeline": {"name": "bench-sandbox", "seed": 0},
    "data": {"use": "text", "corpus": "python-stdlib-docs", "max_chars": 100_000, "block_size": 64, "batch_size": 16},
    "model": {"use": "apt-lm", "d_model": 64, "num_heads": 4, "num_layers": 2, "d_ff": 256},
    "loss": {"use": "lm-cross-entropy"},
    "trainer": {"use": "apt-trainer", "max_steps": 150, "log_every": 0, "eval_every": 50, "eval_batches": 4,
                "export": False, "temp_checkpoint_freq": 0},
}


def cold_starts(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        worker = SandboxWorker(EXEC, SandboxLimits(), "bench")
        started = time.perf_counter()
        worker.start()
        times.append(time.perf_counter() - started)
        worker.close()
    return times


def round_trips(worker: SandboxWorker, calls: int) -> list[float]:
    message = {"code": "result = n + 1", "globals": {"n": 1}}
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        worker.call(message)
        times.append(time.perf_counter() - started)
    return times


def tensor_trips(worker: SandboxWorker, repeats: int) -> list[float]:
    tensor = torch.randn(4 << 20)  # 16 MiB of float32
    message = {"code": "result = x", "globals": {"x": tensor}}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        back = worker.call(message)["result"]
        times.append(time.perf_counter() - started)
    assert torch.equal(back, tensor)
    return times


def training(sandboxed: bool, out: Path) -> float:
    callback = {"use": "early-stopping", "patience": 100}
    if sandboxed:
        callback["sandbox"] = True
    result, _ = run_pipeline({**PIPELINE, "pipeline": {**PIPELINE["pipeline"], "output_dir": str(out)},
                              "callbacks": [callback]})
    return result["seconds"] / result["steps"], result["loss_history"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cold = cold_starts(args.repeats)
    worker = SandboxWorker(EXEC, SandboxLimits(), "bench")
    worker.start()
    try:
        round_trips(worker, 200)  # warm up
        small = round_trips(worker, args.calls)
        big = tensor_trips(worker, args.repeats)
    finally:
        worker.close()
    print(f"cold start (exec worker, no torch):  median {statistics.median(cold) * 1e3:7.1f} ms  "
          f"(min {min(cold) * 1e3:.1f}, max {max(cold) * 1e3:.1f}, n={len(cold)})")
    print(f"warm call round trip, small payload: median {statistics.median(small) * 1e6:7.1f} us  "
          f"(p95 {sorted(small)[int(0.95 * len(small))] * 1e6:.1f} us, n={len(small)})")
    print(f"16 MiB tensor there and back:        median {statistics.median(big) * 1e3:7.2f} ms  "
          f"(min {min(big) * 1e3:.2f}, max {max(big) * 1e3:.2f}, n={len(big)})")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            plain, plain_losses = training(False, Path(tmp) / f"plain{r}")
            boxed, boxed_losses = training(True, Path(tmp) / f"boxed{r}")
            assert plain_losses == boxed_losses, "the sandbox changed training"
            ratios.append(boxed / plain)
            print(f"round {r}: step {plain * 1e3:.1f} ms in-process, {boxed * 1e3:.1f} ms sandboxed "
                  f"(early-stopping callback), ratio {boxed / plain:.3f}", file=sys.stderr)
    print(f"training step with one sandboxed callback / in-process: median ratio {statistics.median(ratios):.3f} "
          f"over {len(ratios)} rounds (same losses)")


if __name__ == "__main__":
    main()

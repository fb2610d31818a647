"""The sandbox's costs: a warm call round trip with a small payload, a 16 MiB tensor to the worker and
back, a worker's cold start (no torch in it), and training with one sandboxed callback that sees
every step (tests/plugins/hostile.py, attacking nothing) against the same callback in-process.
Medians of repeats.

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
from apt_kernel.sandbox.host import SandboxWorker
from apt_kernel.sandbox.limits import SandboxLimits

PLUGINS = str(Path(__file__).resolve().parent.parent / "tests" / "plugins")
EXEC = {"mode": "exec", "allowed_imports": None, "plugin": {"name": "bench"}}
PIPELINE = {
    "pipeline": {"name": "bench-sandbox", "seed": 0},
    "data": {"use": "text", "corpus": "python-stdlib-docs", "max_chars": 400_000, "block_size": 64, "batch_size": 16},
    "model": {"use": "apt-lm", "d_model": 64, "num_heads": 4, "num_layers": 2, "d_ff": 256},
    "loss": {"use": "lm-cross-entropy"},
    "trainer": {"use": "apt-trainer", "max_steps": 200, "log_every": 0, "eval_every": 50, "eval_batches": 4,
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


def tensor_trips(worker: SandboxWorker, repeats: int, back: bool) -> list[float]:
    """16 MiB of float32 into the worker (it answers with one number), or into it and back out."""
    tensor = torch.randn(4 << 20)
    message = {"code": "result = x" if back else "result = float(x[-1])", "globals": {"x": tensor}}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = worker.call(message)["result"]
        times.append(time.perf_counter() - started)
    assert torch.equal(result, tensor) if back else result == float(tensor[-1])
    return times


CALLS: list[float] = []  # host-side time of each sandboxed on_train_batch_end, inside training


def _timed_forward():
    from apt_kernel.sandbox.callback import SandboxedCallback

    forward = SandboxedCallback._forward

    def timed(self, event, trainer, *args):
        started = time.perf_counter()
        try:
            return forward(self, event, trainer, *args)
        finally:
            if event == "on_train_batch_end":
                CALLS.append(time.perf_counter() - started)

    SandboxedCallback._forward = timed


def training(sandboxed: bool, out: Path) -> float:
    callback = {"use": "hostile", "attack": "none", "sandbox": sandboxed}
    result, _ = run_pipeline({**PIPELINE, "pipeline": {**PIPELINE["pipeline"], "output_dir": str(out)},
                              "callbacks": [callback]}, plugins_dirs=(PLUGINS,))
    return result["seconds"] / result["steps"], result["loss_history"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cold = cold_starts(args.repeats)
    worker = SandboxWorker(EXEC, SandboxLimits(), "bench")
    worker.start()
    try:
        round_trips(worker, 200)  # warm up
        small = round_trips(worker, args.calls)
        into = tensor_trips(worker, args.repeats, back=False)
        both = tensor_trips(worker, args.repeats, back=True)
    finally:
        worker.close()
    print(f"cold start (exec worker, no torch):  median {statistics.median(cold) * 1e3:7.1f} ms  "
          f"(min {min(cold) * 1e3:.1f}, max {max(cold) * 1e3:.1f}, n={len(cold)})")
    print(f"warm call round trip, small payload: median {statistics.median(small) * 1e6:7.1f} us  "
          f"(p95 {sorted(small)[int(0.95 * len(small))] * 1e6:.1f} us, n={len(small)})")
    for label, times in (("16 MiB tensor into the worker:     ", into), ("16 MiB tensor there and back:      ", both)):
        print(f"{label} median {statistics.median(times) * 1e3:7.2f} ms  "
              f"(min {min(times) * 1e3:.2f}, max {max(times) * 1e3:.2f}, n={len(times)})")
    ratios = []
    _timed_forward()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            plain, plain_losses = training(False, Path(tmp) / f"plain{r}")
            boxed, boxed_losses = training(True, Path(tmp) / f"boxed{r}")
            assert plain_losses == boxed_losses, "the sandbox changed training"
            ratios.append(boxed / plain)
            print(f"round {r}: step {plain * 1e3:.1f} ms in-process, {boxed * 1e3:.1f} ms sandboxed "
                  f"(a callback called every step), ratio {boxed / plain:.3f}", file=sys.stderr)
    print(f"sandboxed callback call per training step: median {statistics.median(CALLS) * 1e3:.3f} ms "
          f"(p90 {sorted(CALLS)[int(0.9 * len(CALLS))] * 1e3:.3f} ms, n={len(CALLS)})")
    print(f"training time per step with one sandboxed callback / in-process: median ratio "
          f"{statistics.median(ratios):.3f} over {len(ratios)} rounds (same losses; includes validation, noisy)")


if __name__ == "__main__":
    main()

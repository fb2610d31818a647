"""The GPU benchmark scripts, run on CPU at tiny shapes so they work the day a GPU is lent: every line of
bench_gpu_throughput.py gives a result (the raw loops, and `apt-kernel run` on the random-tokens plugin)
and every goal is printed. Nothing is timed here; the numbers come from a GPU (bench/README.md)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]


def test_the_gpu_throughput_benchmark_runs_every_line_at_tiny_shapes(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_throughput.py"), "--small", "--rounds", "2",
                           "--steps", "2", "--warmup", "1", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = json.loads(out.read_text())["lines"]
    assert set(lines) == {"gpt2 sdpa b16", "apt sdpa b16", "apt autopoietic b16", "kernel sdpa b16",
                          "gpt2 sdpa b32", "apt sdpa b32"}
    assert all(line.get("tok_s", 0) > 0 for line in lines.values()), lines
    assert len(lines["kernel sdpa b16"]["intervals"]) == 2  # the trainer's own per-interval rates were read
    for goal in ("1: apt sdpa / gpt2", "2: autopoietic / sdpa", "3: kernel / raw apt tok/s", "4: MFU apt sdpa b32"):
        assert f"goal {goal}" in done.stdout

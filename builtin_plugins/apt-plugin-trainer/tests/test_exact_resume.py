"""The trainer's exact resume after SIGKILL (mid-epoch and mid-accumulation, and at an epoch boundary), and clean
stops on SIGTERM / SIGINT. Every training run is a separate `apt-kernel run` process."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow_tier  # in the slow tier (pytest --slow-tier; CI runs it after the README's command)

PLUGINS = Path(__file__).resolve().parent / "plugins"
PIPELINE = """
[pipeline]
name = "exact"
seed = 5

[data]
use = "text"
corpus = "python-stdlib-docs"
max_chars = 1500
block_size = 16
batch_size = 4

[model]
use = "apt-lm"
d_model = 32
num_heads = 2
num_layers = 1
d_ff = 64
dropout = 0.1

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
epochs = 100
max_steps = 60
accumulate_grad_batches = 2
temp_checkpoint_freq = 3
deterministic = true
log_every = 0
export = false
eval_batches = 2

[[callbacks]]
use = "probe"
"""


def start(tmp_path, name, *extra, log=None, freeze_after=-1):
    path = tmp_path / "exact.toml"
    path.write_text(PIPELINE)
    out = tmp_path / name
    args = [sys.executable, "-m", "apt_kernel.cli", "run", str(path), "--no-progress", "--plugins-dir", str(PLUGINS),
            "--set", f"pipeline.output_dir={str(out)!r}", "--set", f"callbacks.0.log={str(log or out) + '.log'!r}",
            "--set", f"callbacks.0.freeze_after_step={freeze_after}",
            "--set", f"callbacks.0.ready_file={str(out) + '.ready'!r}",
            "--set", f"callbacks.0.go_file={str(out) + '.go'!r}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # same threads in every run: same reduction order
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), out


def finish(proc, timeout=120):
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout + stderr


def wait_for(path: Path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, finish(proc)[1]
        assert time.time() < deadline, "the run never reached the freeze point"
        time.sleep(0.05)


def final_state(out: Path) -> dict:
    return torch.load(sorted((out / "checkpoints").glob("*_step60.pt"))[0], weights_only=True)


def consumed(log: Path) -> dict:
    """optimizer step -> its micro-batches (epoch, batch, checksum); a redone micro-batch replaces the
    lost attempt, so a repeat or a gap shows up as a difference from the uninterrupted run."""
    seen: dict[tuple[int, int, int], int] = {}
    for line in log.read_text().splitlines():
        step, epoch, batch, checksum = map(int, line.split())
        seen[(step, epoch, batch)] = checksum
    steps: dict[int, list] = {}
    for (step, epoch, batch), checksum in sorted(seen.items()):
        steps.setdefault(step, []).append((epoch, batch, checksum))
    return steps


def assert_identical(a, b):
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict"):
        assert_equal_tree(a[key], b[key], key)
    assert a["loss_history"] == b["loss_history"] and len(a["loss_history"]) == 60


def assert_equal_tree(x, y, where):
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_equal_tree(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_equal_tree(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    proc, out = start(tmp, "whole")
    code, output = finish(proc)
    assert code == 0, output
    return out, final_state(out), consumed(Path(str(out) + ".log"))


def kill_and_resume(tmp_path, freeze_after):
    proc, out = start(tmp_path, "killed", freeze_after=freeze_after)
    wait_for(Path(str(out) + ".ready"), proc)
    os.kill(proc.pid, signal.SIGKILL)  # from outside, mid-window: the next micro-batch never runs
    code, _ = finish(proc)
    assert code == -signal.SIGKILL
    assert not (out / "temp").exists() or list((out / "temp").glob("*.pt"))  # a crash keeps temp state
    resumed, _ = start(tmp_path, "killed", "--resume", "latest", log=tmp_path / "resumed")
    code, output = finish(resumed)
    assert code == 0, output
    resumed_from, resumed_at = re.search(r"resumed from (\S+) \(epoch \d+, step (\d+)\)", output).groups()
    resumed_at = int(resumed_at)
    assert not (out / "temp").exists()  # a clean finish removes temp checkpoints
    # what the killed run trained on up to its checkpoint, then only what the resumed run read:
    # a skipped or repeated micro-batch would show up as a difference
    before = {s: v for s, v in consumed(Path(str(out) + ".log")).items() if s <= resumed_at}
    after = consumed(tmp_path / "resumed.log")
    assert min(after) == resumed_at + 1
    return final_state(out), before | after, Path(resumed_from), after[resumed_at + 1][0]


@pytest.mark.slow
def test_sigkill_mid_epoch_mid_window_then_resume_is_exact(tmp_path, uninterrupted):
    whole_out, whole_state, whole_batches = uninterrupted
    boundaries = sorted(int(p.stem.split("_step")[1]) for p in (whole_out / "checkpoints").glob("*.pt"))
    # killed inside the window of step 26: the newest state is the temp checkpoint of step 24, which lies
    # inside an epoch (after the boundary at 22); resuming from it must continue at the right micro-batch
    assert boundaries[1] == 22 and all(b not in (24, 25, 26) for b in boundaries)
    state, batches, resumed_from, first = kill_and_resume(tmp_path, freeze_after=25)
    assert resumed_from.parent.name == "temp" and resumed_from.name == "apt_temp_step24.pt"
    epoch, batch, _ = first
    assert batch > 0 and batch % 2 == 0  # the first micro-batch of a window in the middle of an epoch
    assert_identical(whole_state, state)
    assert batches == whole_batches  # the same samples, none repeated, none skipped


@pytest.mark.slow
def test_sigkill_at_an_epoch_boundary_then_resume_is_exact(tmp_path, uninterrupted):
    whole_out, whole_state, whole_batches = uninterrupted
    boundary = sorted(int(p.stem.split("_step")[1]) for p in (whole_out / "checkpoints").glob("*.pt"))[1]
    state, batches, resumed_from, first = kill_and_resume(tmp_path, freeze_after=boundary)
    assert resumed_from.parent.name == "checkpoints" and first[1] == 0  # the next epoch from its start
    assert_identical(whole_state, state)
    assert batches == whole_batches


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(tmp_path, uninterrupted, sig, code):
    proc, out = start(tmp_path, "signalled", freeze_after=10)
    wait_for(Path(str(out) + ".ready"), proc)
    os.kill(proc.pid, sig)
    Path(str(out) + ".go").write_text("")  # let the frozen micro-batch go on: the step must finish
    returncode, output = finish(proc)
    assert returncode == code, output
    assert f"interrupted by {sig.name} at step 11" in output
    assert (out / "temp" / "apt_temp_step11.pt").exists()
    # the printed command, as given, continues this run (its --set names the output folder)
    command = shlex.split(re.search(r"resume with: (.+)", output).group(1))
    assert command[:3] == ["apt-kernel", "run", str(tmp_path / "exact.toml")] and command[-2:] == ["--resume", "latest"]
    assert f"pipeline.output_dir={str(out)!r}" in command and str(PLUGINS) in command
    resumed = subprocess.run([sys.executable, "-m", "apt_kernel.cli", *command[1:]], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {out / 'temp' / 'apt_temp_step11.pt'}" in resumed.stdout + resumed.stderr
    assert_identical(uninterrupted[1], final_state(out))


@pytest.mark.slow
def test_ten_random_kills_during_saving_lose_nothing_and_the_run_ends_exact(tmp_path, uninterrupted):
    """Saving every step, the run is SIGKILLed 10 times at random moments (most land inside a save) and
    resumed after each: the folder stays consistent every time and the end state is the uninterrupted run's.
    Ten, not more: each kill costs a new process's start (~4 s of the suite's 15 minutes)."""
    import json
    import random

    from apt_plugin_trainer import CheckpointManager

    rng = random.Random(20)
    out, kills, steps = tmp_path / "loop", 0, []
    save_often = ("--set", "trainer.temp_checkpoint_freq=1")

    def newest() -> int:
        return max((int(p.stem.removeprefix("apt_temp_step")) for p in (out / "temp").glob("apt_temp_step*.pt")),
                   default=0) if (out / "temp").exists() else 0

    proc, _ = start(tmp_path, "loop", *save_often)
    while kills < 10:
        deadline, before = time.time() + 60, newest()
        while newest() <= before:  # this attempt is training and saving (not still starting up)
            assert proc.poll() is None, finish(proc)[1]
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.02))  # a save every step: most kills land inside one
        if proc.poll() is not None:  # finished before this kill: start a fresh attempt from scratch
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        # after every kill: strict JSON metadata, every recorded checkpoint intact, no partial file chosen
        manager = CheckpointManager(out)
        if (out / "metadata.json").exists():
            json.loads((out / "metadata.json").read_text(), parse_constant=lambda c: pytest.fail(c))
        for entry in manager.checkpoints():
            manager.read(out / "checkpoints" / entry["file"])  # raises if the hash does not match
        latest = manager.resolve("latest")
        assert not latest.name.startswith(".") and manager.read(latest)["global_step"] >= 1
        steps.append(manager.read(latest)["global_step"])
        proc, _ = start(tmp_path, "loop", "--resume", "latest", *save_often)
    code, output = finish(proc)
    assert code == 0, output
    assert kills == 10, f"the run finished after {kills} kills; the loop needs 10"
    assert steps == sorted(steps) and steps[-1] <= 60  # each kill came later in the run than the one before
    assert_identical(uninterrupted[1], final_state(out))

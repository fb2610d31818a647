"""A run folder belongs to one run: a second run into a live one is refused (naming the PID), a finished
run is neither mixed with nor silently replaced by a new one, and a resume that cannot work leaves every
file as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from conftest import cli


def _checkpoint_shapes(run) -> set[tuple]:
    return {tuple(torch.load(p, weights_only=True)["model_state_dict"]["tok.weight"].shape)
            for p in (run / "checkpoints").glob("*.pt")}


def _files(run) -> dict:
    """Every file's bytes, except the lock's note of its holder's PID."""
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".apt-run.lock"}


def test_a_second_run_into_a_live_folder_is_refused_and_the_first_finishes_intact(tiny_pipeline, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "apt_kernel.cli", "run", str(tiny_pipeline), "--no-progress",
                              "--set", "trainer.max_steps=150", "--set", "trainer.temp_checkpoint_freq=10"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "pipeline.json").exists():  # written once the first run holds the folder
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = cli("run", str(tiny_pipeline), "--no-progress", "--set", "model.d_model=64")
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"{run} is in use by another run (PID {first.pid})" in second.stderr
    assert first.returncode == 0, err
    # nothing of the second run is in the folder: every checkpoint has the first run's model size
    assert _checkpoint_shapes(run) == {(91, 32)}
    assert json.loads((run / "pipeline.json").read_text())["model"]["d_model"] == 32
    steps = [c["global_step"] for c in json.loads((run / "metadata.json").read_text())["checkpoints"]]
    assert len(steps) == 1 and f"last checkpoint  {run}" in out  # one run, one epoch: one checkpoint


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tiny_pipeline, tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(tiny_pipeline), "--no-progress").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    again = cli("run", str(tiny_pipeline), "--no-progress", "--set", "model.d_model=64")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"{run} already holds a run (checkpoints, metadata.json, model" in again.stderr
    assert "--resume latest" in again.stderr and "--overwrite" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # not a file touched

    replaced = cli("run", str(tiny_pipeline), "--no-progress", "--overwrite", "--set", "model.d_model=64")
    assert replaced.returncode == 0, replaced.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in replaced.stdout
    assert _checkpoint_shapes(aside[0]) == {(91, 32)} and _checkpoint_shapes(run) == {(91, 64)}
    entries = json.loads((run / "metadata.json").read_text())["checkpoints"]
    assert [c["global_step"] for c in entries] == [4] and entries[0]["is_best"]


def test_resuming_a_finished_run_with_the_same_limits_trains_nothing(tiny_pipeline, tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(tiny_pipeline), "--no-progress").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    again = cli("run", str(tiny_pipeline), "--no-progress", "--resume", "latest")
    assert again.returncode == 0, again.stderr
    assert "nothing to train: the run already finished at step 4 (max_steps = 4)" in again.stdout
    assert "steps            4" in again.stdout and "differs" not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before


def test_a_rejected_resume_names_the_changed_keys_and_writes_nothing(tiny_pipeline, tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(tiny_pipeline), "--no-progress").returncode == 0
    before = _files(run)
    bad = cli("run", str(tiny_pipeline), "--no-progress", "--resume", "latest", "--set", "model.d_model=64",
              "--set", "trainer.max_steps=8")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "the pipeline differs from the checkpoint's: model.d_model: 32 in the checkpoint, 64 now" in bad.stderr
    assert "trainer.max_steps: 4 in the checkpoint, 8 now" in bad.stderr
    assert "tok.weight: (91, 32) in the checkpoint, (91, 64) in the model" in bad.stderr
    assert _files(run) == before  # pipeline.json, metadata, checkpoints: byte for byte


def test_resume_without_metadata_says_so_and_how_to_resume_from_the_file(tiny_pipeline, tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(tiny_pipeline), "--no-progress").returncode == 0
    (run / "metadata.json").unlink()
    result = cli("run", str(tiny_pipeline), "--no-progress", "--resume", "latest", "--set", "trainer.max_steps=6")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    checkpoint = run / "checkpoints" / "apt_model_epoch0_step4.pt"
    assert f"{run / 'metadata.json'} is missing" in result.stderr and f"--resume {checkpoint}" in result.stderr
    resumed = cli("run", str(tiny_pipeline), "--no-progress", "--resume", str(checkpoint),
                  "--set", "trainer.max_steps=6")
    assert resumed.returncode == 0, resumed.stderr
    assert "steps            6" in resumed.stdout


def test_metadata_of_the_wrong_shape_is_a_clear_error(tiny_pipeline, tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(tiny_pipeline), "--no-progress").returncode == 0
    (run / "metadata.json").write_text('{"checkpoints": 5}')
    result = cli("run", str(tiny_pipeline), "--no-progress", "--resume", "latest")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "metadata.json is not a checkpoint record: expected {\"checkpoints\": [...]}" in result.stderr


def test_resume_and_overwrite_together_are_refused(tiny_pipeline):
    result = cli("run", str(tiny_pipeline), "--resume", "latest", "--overwrite")
    assert result.returncode == 2 and "give one" in result.stderr


def test_the_lock_is_released_when_its_holder_is_killed(tiny_pipeline, tmp_path):
    """An OS lock: a SIGKILLed run leaves no stale lock, so a resume can start at once."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "apt_kernel.cli", "run", str(tiny_pipeline), "--no-progress",
                             "--set", "trainer.max_steps=400", "--set", "trainer.temp_checkpoint_freq=5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((run / "temp").glob("*.pt")) if (run / "temp").exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, 9)
    proc.wait()
    assert (run / ".apt-run.lock").read_text().strip() == str(proc.pid)  # the file stays; its lock does not
    resumed = cli("run", str(tiny_pipeline), "--no-progress", "--resume", "latest", "--set", "trainer.max_steps=400",
                  "--set", "trainer.temp_checkpoint_freq=5")
    assert resumed.returncode == 0, resumed.stderr

"""A run killed in its end-of-run work (here the multimodal-accuracy scoring, in on_fit_end) is not finished:
its --resume does that work, without training a step, and reports it, and records it in metadata.json: only then
is the run finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from test_multimodal_pipeline import PIPELINE, write_manifests

pytestmark = [pytest.mark.slow, pytest.mark.slow_tier]  # two runs of apt-kernel

# a callback that kills its own process, as kill -9 would, in on_fit_end, once (the file it leaves says it did)
KILLER = '''
APT_MANIFEST = {"kernel_api": "^1.0", "version": "1.0.0",
                "provides": {"callback": {"kill-at-fit-end": {"options": {"once_file": {"type": "str"}}}}}}

import os, signal  # noqa: E402
from pathlib import Path  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402


class KillAtFitEnd(Callback):
    def __init__(self, once_file):
        self.once_file = Path(once_file)

    def on_fit_end(self, trainer, result):
        if not self.once_file.exists():
            self.once_file.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def register_callbacks(register):
    register("kill-at-fit-end", lambda options, context: KillAtFitEnd(**options))
'''


def test_a_run_killed_in_its_end_of_run_scoring_is_scored_by_its_resume_not_called_finished(tmp_path):
    write_manifests(tmp_path / "data")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "fit_end_killer.py").write_text(KILLER)
    pipeline = PIPELINE.format(folder=tmp_path / "data").replace(
        'val_manifest = "', f'test_manifest = "{tmp_path / "data" / "val.jsonl"}"\nval_manifest = "')
    pipeline += textwrap.dedent(f"""
        [[callbacks]]
        use = "kill-at-fit-end"
        once_file = "{tmp_path / 'killed-once'}"

        [[callbacks]]
        use = "multimodal-accuracy"
        max_new_tokens = 8
        """)
    (tmp_path / "p.toml").write_text(pipeline)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "apt_kernel.cli", "run", str(tmp_path / "p.toml"), "--no-progress",
               "--plugins-dir", str(tmp_path / "plugins"), "--set", "trainer.max_steps=3",
               "--set", f"pipeline.output_dir={str(run)!r}"]
    env = dict(os.environ, APT_KERNEL_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    killed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "test accuracy" not in killed.stdout and (tmp_path / "killed-once").exists()
    killed_record = json.loads((run / "metadata.json").read_text())
    steps = [c["global_step"] for c in killed_record["checkpoints"]]
    assert steps == [3] and "end_of_run" not in killed_record

    resumed = subprocess.run([*command, "--resume", "latest"], capture_output=True, text=True, env=env, timeout=300)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output
    assert "nothing to train" not in output
    assert "the run finished training at step 3, but its end-of-run work (model/, the callbacks' on_fit_end) did " \
           "not complete: doing it now" in output
    accuracy = float(output.split("test accuracy ")[1].split("%")[0]) / 100
    metadata = json.loads((run / "metadata.json").read_text())
    assert [c["global_step"] for c in metadata["checkpoints"]] == steps  # scored, not retrained
    assert metadata["end_of_run"]["global_step"] == 3
    assert round(metadata["end_of_run"]["result"]["test_accuracy"], 4) == round(accuracy, 4)
    assert metadata["end_of_run"]["result"]["test_examples"] == 12
    assert (run / "model" / "config.json").exists()
    # a finished run (this record at its step) resumed trains and scores nothing: tests/test_run_folder.py

"""A failing rank under DDP (torchrun, gloo on CPU), where the trainer and the error log meet: every rank stops
at the same step, rank 0 saves the last completed one, and the error log records the failing rank's own error.
(The trainer's own DDP and FSDP tests are its plugin's: builtin_plugins/apt-plugin-trainer/tests.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_PIPELINE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("where", ["forward", "callback"])
def test_a_failing_rank_stops_every_rank_with_a_checkpoint_and_a_logged_error(tmp_path, where):
    """Rank 1 raises at step 7 (in forward: before the backward DDP all-reduces; or in a callback after the
    update): rank 0 learns it at the same step, saves, the error is logged with rank 1, both exit non-zero."""
    from apt_plugin_errors import ErrorLogger

    pipeline = tmp_path / "fail.toml"
    pipeline.write_text(TINY_PIPELINE.format(out=(tmp_path / "fail").as_posix())
                        + f'\n[[callbacks]]\nuse = "boom"\nat_step = 7\nrank = 1\nwhere = "{where}"\n'
                        '\n[[callbacks]]\nuse = "error-log"\n')
    command = [sys.executable, "-m", "apt_kernel.cli", "run", str(pipeline), "--no-progress", "--nproc-per-node", "2",
               "--plugins-dir", str(REPO / "tests" / "plugins"), "--set", "trainer.max_steps=20"]
    started = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("training hung") from None
    output = out + err
    assert time.time() - started < 60, output
    assert proc.returncode != 0, output
    saved = 6 if where == "forward" else 7  # the last step every rank completed
    assert "rank 1 failed at step 7: RuntimeError: boom at step 7" in output
    assert (tmp_path / "fail" / "temp" / f"apt_temp_step{saved}.pt").exists(), output
    rows = ErrorLogger(tmp_path / "fail" / "errors.db").search("boom")
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["rank"], row["global_step"], row["error_type"]) == (1, 7, "RuntimeError")
    assert row["checkpoint_path"].endswith(f"apt_temp_step{saved}.pt")
    assert "hunter2" not in row["message"]
    assert ("pre_forward" if where == "forward" else "on_train_batch_end") in row["stack_trace"]

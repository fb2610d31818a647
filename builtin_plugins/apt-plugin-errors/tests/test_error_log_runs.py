"""apt-plugin-errors in real runs of a tiny APT language model (its [test] extra): a failed run recorded with
its step and read back with `apt-kernel errors`, a clean run writing nothing, a skipped NaN step recorded."""

from apt_plugin_errors import ErrorLogger
from apt_plugin_lm.testing_runs import run_with_nan_step
from apt_sdk.testing import cli

# a callback that fails at step 3 with a secret in its message (loaded with --plugins-dir)
BOOM = '''
APT_MANIFEST = {"kernel_api": "^1.0", "version": "1.0.0", "provides": {"callback": {"boom": {}}}}

from apt_sdk import Callback, hookimpl  # noqa: E402


class Boom(Callback):
    def on_train_batch_end(self, trainer, step, metrics):
        if step == 3:
            raise RuntimeError(f"boom at step {step} in /tmp/some/file.py, token=hunter2")


@hookimpl
def register_callbacks(register):
    register("boom", lambda options, context: Boom())
'''


def test_a_failed_run_is_recorded_with_its_step_and_shown_by_the_cli(tiny_pipeline, tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "boom.py").write_text(BOOM)
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "error-log"\n'
                             '\n[[callbacks]]\nuse = "boom"\n')
    run = cli("run", str(tiny_pipeline), "--no-progress", "--plugins-dir", str(tmp_path / "plugins"),
              "--set", "trainer.temp_checkpoint_freq=2")
    assert run.returncode == 1 and "boom at step 3" in run.stderr
    db = tmp_path / "run"
    listed = cli("errors", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    assert "RuntimeError" in listed.stdout and "step 3" in listed.stdout and "hunter2" not in listed.stdout
    error_id = listed.stdout.split()[0]
    shown = cli("errors", "show", error_id, "--db", str(db))
    assert "global_step      3" in shown.stdout and "pipeline         tiny" in shown.stdout
    assert "on_train_batch_end" in shown.stdout  # the stack trace
    # the state --resume latest continues from: the temp checkpoint of step 2 (the run had no other)
    assert f"reproduce with   apt-kernel run {db / 'pipeline.json'} ... --resume {db / 'temp' / 'apt_temp_step2.pt'}" \
        in shown.stdout
    assert "1 errors, 1 unresolved" in cli("errors", "report", "--db", str(db)).stdout
    assert "resolved 1 error(s)" in cli("errors", "resolve", error_id, "--db", str(db)).stdout
    assert cli("errors", "list", "--db", str(db)).stdout.strip() == "no errors"
    missing = cli("errors", "list", "--db", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no error database" in missing.stderr


def test_a_clean_run_writes_no_error_rows(tiny_pipeline, tmp_path):
    tiny_pipeline.write_text(tiny_pipeline.read_text() + '\n[[callbacks]]\nuse = "error-log"\n')
    assert cli("run", str(tiny_pipeline), "--no-progress").returncode == 0
    assert ErrorLogger(tmp_path / "run" / "errors.db").count() == 0


def test_a_skipped_nan_step_is_recorded(tmp_path):
    run_with_nan_step(tmp_path / "nan", callbacks=[{"use": "error-log"}])
    (row,) = ErrorLogger(tmp_path / "nan" / "errors.db").search()
    assert row["error_type"] == "NonFiniteGradients" and row["global_step"] == 3 and row["severity"] == "warning"
    assert row["pipeline"] == "nan"

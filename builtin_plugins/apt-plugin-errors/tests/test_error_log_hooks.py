"""What a component reports while the pipeline is still being built (before the error log exists) is
recorded once the error log is built; reports of a run without an error log are not kept."""

from types import SimpleNamespace

from apt_plugin_errors import ErrorLogger
from apt_plugin_errors import plugin as errors


def test_a_report_made_before_the_error_log_is_built_is_recorded(tmp_path):
    run_dir = str(tmp_path / "run")
    pipeline = {"pipeline": {"name": "early"}}
    errors.pipeline_start(pipeline=pipeline, run_dir=run_dir)
    errors.error_reported(error={"type": "SkippedRecord", "severity": "warning", "run_dir": run_dir,
                                 "message": "train_manifest: line 3 of train.jsonl: cannot be read"})
    context = SimpleNamespace(run_dir=tmp_path / "run", config=pipeline)
    errors.build_error_log({"db_path": None}, context)
    (row,) = ErrorLogger(tmp_path / "run" / "errors.db").search()
    assert row["error_type"] == "SkippedRecord" and "line 3 of train.jsonl" in row["message"]
    errors.pipeline_end(pipeline=pipeline, run_dir=run_dir, result={})
    errors._ACTIVE.pop(run_dir)


def test_reports_of_a_run_without_an_error_log_are_dropped_at_its_end(tmp_path):
    run_dir = str(tmp_path / "plain")
    errors.pipeline_start(pipeline={}, run_dir=run_dir)
    errors.error_reported(error={"type": "SkippedRecord", "message": "x", "run_dir": run_dir})
    errors.pipeline_end(pipeline={}, run_dir=run_dir, result={})
    assert run_dir not in errors._PENDING and not (tmp_path / "plain").exists()


def test_a_db_path_that_cannot_be_opened_is_an_option_error(tmp_path):
    # a db_path under a file was "failed in hook callback factory 'error-log': FileExistsError", exit 1
    import pytest

    from apt_sdk import OptionError

    (tmp_path / "a-file").write_text("")
    context = SimpleNamespace(run_dir=tmp_path / "run", config={"pipeline": {"name": "x"}})
    with pytest.raises(OptionError, match="cannot open .*errors.db: .*a-file is a file, not a folder") as raised:
        errors.build_error_log({"db_path": str(tmp_path / "a-file" / "errors.db")}, context)
    assert raised.value.key == "db_path"

"""ErrorLogger on its own: events and patterns, redaction, normalisation, concurrent writers."""

import json
import sqlite3
import subprocess
import sys

import pytest

from apt_plugin_errors import ErrorLogger
from apt_plugin_errors.logger import normalize_message, redact


def fail(message):
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def test_log_error_records_the_event_and_its_pattern(tmp_path):
    log = ErrorLogger(tmp_path / "e.db")
    first = log.log_error(fail("bad shape 3x4 in /data/run1/x.pt"), context={"lr": 0.1}, plugin="p", epoch=1,
                          global_step=7, rank=1)
    log.log_error(fail("bad shape 5x6 in /data/run2/y.pt"))  # same pattern: numbers and paths masked
    log.log_error(fail("something else entirely"))
    row = log.get(first)
    assert row["error_type"] == "ValueError" and row["global_step"] == 7 and row["rank"] == 1
    assert "in fail" in row["stack_trace"] and row["context"] == {"lr": 0.1} and not row["resolved"]
    report = log.generate_error_report(tmp_path / "report.json")
    assert report["total"] == 3 and report["by_type"] == {"ValueError": 3}
    assert report["top_patterns"][0]["count"] == 2
    assert report["top_patterns"][0]["normalized_message"] == "bad shape <n>x<n> in <path>"
    assert json.loads((tmp_path / "report.json").read_text())["unresolved"] == 3
    assert log.analyze_error_patterns(days=1) == {"ValueError": 3}
    assert log.mark_resolved(pattern_hash=row["pattern_hash"]) == 2
    assert [r["message"] for r in log.search(unresolved=True)] == ["something else entirely"]
    assert len(log.search(text="shape")) == 2


def test_secrets_are_redacted_before_storage(tmp_path):
    assert redact({"api_key": "abc", "nested": {"password": "x", "lr": 1}, "items": ["token=zzz"]}) == {
        "api_key": "***", "nested": {"password": "***", "lr": 1}, "items": ["token=***"]}
    log = ErrorLogger(tmp_path / "e.db")
    row = log.get(log.log_error("login failed: password: hunter2, Authorization: Bearer abc.def",
                                context={"HF_TOKEN": "hf_123", "secret_key": "s"}))
    assert "hunter2" not in row["message"] and "abc.def" not in row["message"]
    assert row["context"] == {"HF_TOKEN": "***", "secret_key": "***"}
    assert "hunter2" not in (tmp_path / "e.db").read_bytes().decode("latin-1")


def test_normalisation_masks_numbers_hex_and_paths():
    assert normalize_message("step 12 at 0xdeadbeef in /a/b/c.py loss 3.25") == "step <n> at <hex> in <path> loss <n>"


WRITER = """
import sys
from apt_plugin_errors import ErrorLogger
log = ErrorLogger(sys.argv[1])
for i in range(1000):
    log.log_error(RuntimeError(f"writer {sys.argv[2]} error {i}"), global_step=i)
"""


@pytest.mark.slow
def test_two_processes_write_two_thousand_rows_without_lock_errors(tmp_path):
    db = tmp_path / "shared.db"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n)], stderr=subprocess.PIPE, text=True)
               for n in range(2)]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0 and "locked" not in err, err
    log = ErrorLogger(db)
    assert log.count() == 2000
    assert log.generate_error_report()["top_patterns"][0]["count"] == 2000  # one pattern, numbers masked


def test_the_database_is_in_wal_mode_so_readers_and_a_writer_do_not_wait_for_each_other(tmp_path):
    db = tmp_path / "errors.db"
    writer = ErrorLogger(db)
    writer.log_error(fail("first"))
    with sqlite3.connect(db) as other:  # the mode is the database file's, seen by any connection
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    reader = ErrorLogger(db)
    reader.db.execute("BEGIN")
    assert reader.count() == 1  # a read transaction is open from here on
    # a rollback journal would need the reader gone to commit (after the 60 s busy timeout: fail at once)
    writer.db.execute("PRAGMA busy_timeout=0")
    writer.log_error(fail("second"))
    assert reader.count() == 1  # its snapshot
    reader.db.execute("COMMIT")
    assert reader.count() == 2

    writer.db.execute("BEGIN IMMEDIATE")  # a writer holding the lock mid-transaction
    writer.db.execute("DELETE FROM errors")
    assert reader.count() == 2
    writer.db.execute("ROLLBACK")
    writer.close()
    reader.close()

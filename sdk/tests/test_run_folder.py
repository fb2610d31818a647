"""The run-folder reader: a folder laid out as apt_sdk.run_folder documents it (written here by hand, as a trainer
would) is read as --resume reads it, and each problem is a UserError naming its file."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from apt_sdk import RunReader, UserError
from apt_sdk.run_folder import PIPELINE_RECORD


def write_run(run, steps=(2, 4), best=2, temp=None, end_of_run=None):
    """checkpoints/ of ``steps`` recorded in metadata.json (``best`` marked), a temp checkpoint of ``temp``."""
    (run / "checkpoints").mkdir(parents=True)
    entries = []
    for epoch, step in enumerate(steps):
        path = run / "checkpoints" / f"apt_model_epoch{epoch}_step{step}.pt"
        torch.save({"model_state_dict": {"w": torch.full((2,), float(step))}, "global_step": step}, path)
        entries.append({"file": path.name, "epoch": epoch, "global_step": step, "metrics": {"val_loss": 1.0},
                        "is_best": step == best, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                        "time": 0.0})
    record = {"checkpoints": entries, **({"end_of_run": end_of_run} if end_of_run else {})}
    (run / "metadata.json").write_text(json.dumps(record))
    if temp is not None:
        (run / "temp").mkdir()
        torch.save({"model_state_dict": {}, "global_step": temp}, run / "temp" / f"apt_temp_step{temp}.pt")


def test_latest_is_the_newest_state_regular_or_temp_and_the_regular_one_at_equal_steps(tmp_path):
    write_run(tmp_path / "a", temp=5)
    assert RunReader(tmp_path / "a").resolve("latest").name == "apt_temp_step5.pt"
    write_run(tmp_path / "b", temp=4)
    assert RunReader(tmp_path / "b").resolve().name == "apt_model_epoch1_step4.pt"
    write_run(tmp_path / "c", temp=3)
    reader = RunReader(tmp_path / "c")
    newest = tmp_path / "c" / "checkpoints" / "apt_model_epoch1_step4.pt"
    assert reader.resolve("latest") == reader.latest_checkpoint() == newest
    assert reader.resolve("best").name == "apt_model_epoch0_step2.pt"
    assert reader.resolve(str(tmp_path / "c/checkpoints/apt_model_epoch0_*.pt")).name == "apt_model_epoch0_step2.pt"
    assert [c["global_step"] for c in reader.checkpoints()] == [2, 4]
    assert reader.read(reader.resolve("best"))["model_state_dict"]["w"].tolist() == [2.0, 2.0]


def test_the_records_of_the_kernel_and_the_trainer_and_the_exported_model(tmp_path):
    from apt_kernel.rundir import RECORD

    assert PIPELINE_RECORD == RECORD  # the kernel writes what this reads
    run = tmp_path / "run"
    write_run(run, end_of_run={"global_step": 4, "result": {"steps": 4}})
    reader = RunReader(run)
    assert reader.pipeline() is None and reader.exported_model() is None
    (run / "pipeline.json").write_text(json.dumps({"pipeline": {"name": "x"}}))
    (run / "model").mkdir()
    assert reader.exported_model() is None  # an empty folder is no model
    (run / "model" / "config.json").write_text("{}")
    assert reader.pipeline() == {"pipeline": {"name": "x"}} and reader.exported_model() == run / "model"
    assert reader.end_of_run() == {"global_step": 4, "result": {"steps": 4}}


def test_each_problem_names_its_file_and_reading_creates_nothing(tmp_path):
    nothing = RunReader(tmp_path / "nothing")
    assert nothing.latest_checkpoint() is None and nothing.checkpoints() == [] and nothing.end_of_run() is None
    with pytest.raises(UserError, match="no checkpoint to resume from in"):
        nothing.resolve("latest")
    assert not (tmp_path / "nothing").exists()
    run = tmp_path / "run"
    write_run(run)
    with open(run / "checkpoints" / "apt_model_epoch1_step4.pt", "ab") as fh:
        fh.write(b"changed")
    with pytest.raises(UserError, match="apt_model_epoch1_step4.pt does not match the hash recorded in"):
        RunReader(run).read(RunReader(run).resolve("latest"))
    (run / "metadata.json").unlink()
    with pytest.raises(UserError, match=r"metadata.json is missing, so the 2 checkpoint\(s\) in .* are not recorded"):
        RunReader(run).resolve("latest")
    (run / "metadata.json").write_text('{"checkpoints": [{"file": 3}]}')
    with pytest.raises(UserError, match=r'is not a checkpoint record: checkpoints\[0\] needs "file"'):
        RunReader(run).checkpoints()
    (run / "pipeline.json").write_text("{")
    with pytest.raises(UserError, match="pipeline.json is not valid JSON"):
        RunReader(run).pipeline()

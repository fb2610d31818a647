"""A save is atomic and durable, checked deterministically: a writer that dies in the middle of a file
(os._exit at a chosen write, no cleanup runs) leaves the previous state whole and chosen, and the
system calls of a save come in the order that makes it durable (data, fsync, rename, fsync of the
folder). A random kill during a training run found a missing rename 2 times in 5 and a missing fsync
never."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apt_plugin_trainer.checkpoint import CheckpointManager

# Run in a child: saves step 2 after step 1, and dies (os._exit, as a SIGKILL would) at the first write
# into the file named by argv[2], after writing half of that write's bytes.
_DIE_WHILE_WRITING = """
import os, sys
import torch
from apt_plugin_trainer import checkpoint

out, target = sys.argv[1], sys.argv[2]
original = checkpoint._HashingFile.write

def write_half_and_die(self, data):
    if target in os.path.basename(self.fh.name):
        data = memoryview(data).cast("B")
        self.fh.write(data[: max(1, len(data) // 2)])
        self.fh.flush()
        os._exit(17)
    return original(self, data)

checkpoint._HashingFile.write = write_half_and_die
torch.manual_seed(2)
model = torch.nn.Linear(4, 3)
manager = checkpoint.CheckpointManager(out)
if target.startswith("apt_temp"):
    manager.save_temp({"model_state_dict": model.state_dict(), "global_step": 2})
else:
    manager.save_checkpoint(model, None, None, 1, 2, [1.0, 0.5])
"""


def _first_state(out: Path) -> torch.nn.Module:
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    manager = CheckpointManager(out)
    manager.save_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), None, 0, 1, [1.0])
    manager.save_temp({"model_state_dict": model.state_dict(), "global_step": 1})
    return model


@pytest.mark.parametrize("target", ["apt_model_epoch1_step2.pt", "metadata.json", "apt_temp_step2.pt"])
def test_a_save_that_dies_in_the_middle_of_a_file_leaves_the_previous_state_whole(tmp_path, target):
    model = _first_state(tmp_path)
    metadata = (tmp_path / "metadata.json").read_bytes()
    died = subprocess.run([sys.executable, "-c", _DIE_WHILE_WRITING, str(tmp_path), target],
                          capture_output=True, text=True)
    assert died.returncode == 17, died.stderr  # it did die while writing that file

    assert (tmp_path / "metadata.json").read_bytes() == metadata
    # under the final names only whole files: the half-written one is a hidden partial file
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "apt_model_epoch0_step1.pt"] + (["apt_model_epoch1_step2.pt"] if target == "metadata.json" else [])
    assert sorted(p.name for p in (tmp_path / "temp").iterdir() if not p.name.startswith(".")) == [
        "apt_temp_step1.pt"]
    manager = CheckpointManager(tmp_path)
    assert [c["file"] for c in manager.checkpoints()] == ["apt_model_epoch0_step1.pt"]
    assert manager.resolve("latest") == tmp_path / "checkpoints" / "apt_model_epoch0_step1.pt"
    fresh = torch.nn.Linear(4, 3)
    assert manager.load_checkpoint(fresh, latest=True)[:2] == (0, 1)  # its hash checked against metadata.json
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert manager.read(tmp_path / "temp" / "apt_temp_step1.pt")["global_step"] == 1


# Run in a child: a save that stops halfway through its checkpoint file (the partial file is on disk)
# until the test, told so on stdout, answers on stdin.
_PAUSE_WHILE_WRITING = """
import sys
import torch
from apt_plugin_trainer import checkpoint

original, paused = checkpoint._HashingFile.write, []

def write_and_wait(self, data):
    written = original(self, data)
    if not paused:
        paused.append(True)
        self.fh.flush()
        print("writing", flush=True)
        sys.stdin.readline()
    return written

checkpoint._HashingFile.write = write_and_wait
checkpoint.CheckpointManager(sys.argv[1]).save_checkpoint(torch.nn.Linear(4, 3), None, None, 0, 7, [1.0])
print("saved", flush=True)
"""


def test_a_second_process_opening_the_folder_mid_save_leaves_the_save_alone(tmp_path):
    """The original deleted every partial file when a manager opened the folder, so a second process
    (a resume attempt, a monitoring script) killed the live run mid-save with FileNotFoundError."""
    writer = subprocess.Popen([sys.executable, "-c", _PAUSE_WHILE_WRITING, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n", writer.stderr.read()
        partial = [p.name for p in (tmp_path / "checkpoints").iterdir()]
        assert partial == [f".apt_model_epoch0_step7.pt.{writer.pid}.tmp"]
        other = CheckpointManager(tmp_path)
        assert other.checkpoints() == []  # reading: a partial file is never chosen
        other.save_checkpoint(torch.nn.Linear(4, 3), None, None, 0, 1, [2.0])  # writing: removes dead writers' only
        assert (tmp_path / "checkpoints" / partial[0]).exists()
    finally:
        out, err = writer.communicate("go\n")
    assert writer.returncode == 0 and out == "saved\n", err
    manager = CheckpointManager(tmp_path)
    assert [c["file"] for c in manager.checkpoints()] == ["apt_model_epoch0_step1.pt", "apt_model_epoch0_step7.pt"]
    assert manager.load_checkpoint(torch.nn.Linear(4, 3), latest=True)[:2] == (0, 7)


@pytest.fixture
def syscalls(monkeypatch):
    """What a save asks of the OS, in order: each fsync (a file's with its size then, or a folder's) and
    each rename. A file's size at its fsync is what that fsync makes durable."""
    seen: list[tuple] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        seen.append(("fsync dir", path) if path.is_dir() else ("fsync", path, os.fstat(fd).st_size))
        fsync(fd)

    def recording_replace(src, dst) -> None:
        seen.append(("rename", Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return seen


def _durable_write(seen: list[tuple], final: Path) -> list[tuple]:
    """The three calls of one durable write of ``final``, checked, removed from the front of ``seen``."""
    assert [call[0] for call in seen[:3]] == ["fsync", "rename", "fsync dir"], f"writing {final}: {seen}"
    (_, written, size), (_, source, target), (_, folder) = seen[:3]
    assert written == source != final and source.parent == final.parent, seen[:3]  # a temp file beside it
    assert target == final and folder == final.parent, seen[:3]
    assert size == final.stat().st_size > 0, "fsync ran before all the data reached the file"
    del seen[:3]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc/self/fd")
def test_each_file_of_a_save_is_written_fsynced_renamed_and_its_folder_fsynced_in_that_order(tmp_path, syscalls):
    model = torch.nn.Linear(4, 3)
    manager = CheckpointManager(tmp_path)
    manager.save_checkpoint(model, None, None, 0, 1, [1.0])
    _durable_write(syscalls, tmp_path / "checkpoints" / "apt_model_epoch0_step1.pt")
    _durable_write(syscalls, tmp_path / "metadata.json")  # after the checkpoint it records is durable
    assert syscalls == []
    manager.save_temp({"model_state_dict": model.state_dict(), "global_step": 2})
    _durable_write(syscalls, tmp_path / "temp" / "apt_temp_step2.pt")
    assert syscalls == []
    written = (tmp_path / "checkpoints" / "apt_model_epoch0_step1.pt").read_bytes()
    assert json.loads((tmp_path / "metadata.json").read_text())["checkpoints"][0]["sha256"] == hashlib.sha256(
        written).hexdigest()

"""A test plugin (loaded with --plugins-dir): logs every micro-batch it sees and can freeze training
at a chosen point so a test can kill or signal the process there, deterministically."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"probe": {"options": {
        "log": {"type": "str", "help": "append one line per micro-batch: step epoch batch checksum"},
        "freeze_after_step": {"type": "int", "default": -1, "help": "freeze in the first micro-batch after it"},
        "ready_file": {"type": "str", "default": ""},
        "go_file": {"type": "str", "default": ""},
    }}}},
}

import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402


class Probe(Callback):
    def __init__(self, log, freeze_after_step, ready_file, go_file):
        self.log, self.freeze_after_step = log, freeze_after_step
        self.ready_file, self.go_file = ready_file, go_file

    def on_micro_batch_end(self, trainer, epoch, batch_index, batch):
        step = trainer.step + 1  # the optimizer step this micro-batch belongs to
        ids = batch["input_ids"]
        checksum = int((ids * (1 + torch_arange(ids))).sum())
        with open(self.log, "a") as fh:
            fh.write(f"{step} {epoch} {batch_index} {checksum}\n")
            fh.flush()
            os.fsync(fh.fileno())
        if step == self.freeze_after_step + 1 and trainer.is_main and not Path(self.ready_file).exists():
            Path(self.ready_file).write_text(str(os.getpid()))
            while not (self.go_file and Path(self.go_file).exists()):
                time.sleep(0.02)


def torch_arange(ids):
    import torch

    return torch.arange(ids.numel()).view_as(ids)


@hookimpl
def register_callbacks(register):
    register("probe", lambda options, context: Probe(**options))

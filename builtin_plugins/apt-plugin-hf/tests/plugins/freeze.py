"""A test plugin (loaded with --plugins-dir): at a chosen optimizer step it writes a file and waits, inside the
step's first micro-batch, so a test can kill the process exactly there (not at a moment that depends on speed)."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"freeze": {"options": {
        "after_step": {"type": "int", "help": "freeze in the first micro-batch after this optimizer step"},
        "ready_file": {"type": "str", "help": "written when frozen"},
    }}}},
}

import time  # noqa: E402
from pathlib import Path  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402


class Freeze(Callback):
    def __init__(self, after_step: int, ready_file: str) -> None:
        self.after_step, self.ready_file = after_step, Path(ready_file)

    def on_micro_batch_end(self, trainer, epoch, batch_index, batch) -> None:
        if trainer.step == self.after_step and not self.ready_file.exists():
            self.ready_file.write_text("frozen")
            while True:  # until the test kills the process
                time.sleep(0.05)


@hookimpl
def register_callbacks(register):
    register("freeze", lambda options, context: Freeze(**options))

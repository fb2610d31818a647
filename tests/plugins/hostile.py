"""A test plugin: a callback that attacks its host at a chosen step (run it with sandbox = true)."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"hostile": {"options": {
        "attack": {"type": "str", "choices": ["system", "segfault", "write", "raise", "exit", "none"]},
        "at_step": {"type": "int", "default": 3},
        "target": {"type": "str", "default": ""},
    }}}},
}

import ctypes  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402


class Hostile(Callback):
    def __init__(self, attack, at_step, target):
        self.attack, self.at_step, self.target = attack, at_step, target
        self.seen = []

    def on_train_batch_end(self, trainer, step, metrics):
        self.seen.append(float(metrics["loss"]))
        if step != self.at_step:
            return
        if self.attack == "system":
            if os.system(f"touch {self.target}") != 0:
                raise PermissionError("os.system was refused")
        elif self.attack == "segfault":
            ctypes.string_at(0)
        elif self.attack == "write":
            with open(self.target, "w") as fh:
                fh.write("escaped")
        elif self.attack == "raise":
            raise RuntimeError("hostile plugin gives up")
        elif self.attack == "exit":
            sys.exit(3)

    def state_dict(self):
        return {"seen": self.seen}


@hookimpl
def register_callbacks(register):
    register("hostile", lambda options, context: Hostile(**options))

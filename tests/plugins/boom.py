"""A test plugin: a callback that raises at a chosen optimizer step."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"boom": {"options": {"at_step": {"type": "int", "default": 2}}}}},
}

from apt_sdk import Callback, hookimpl  # noqa: E402


class Boom(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, step, metrics):
        if step == self.at_step:
            raise RuntimeError(f"boom at step {step} in /tmp/some/file.py, token=hunter2")


@hookimpl
def register_callbacks(register):
    register("boom", lambda options, context: Boom(**options))

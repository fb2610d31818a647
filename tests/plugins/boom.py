"""A test plugin: raises at a chosen optimizer step, on a chosen rank, in a callback or inside the
model's forward (before the backward whose gradients DDP all-reduces)."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"boom": {"options": {
        "at_step": {"type": "int", "default": 2},
        "rank": {"type": "int", "default": -1, "help": "-1 = every rank"},
        "where": {"type": "str", "default": "callback", "choices": ["callback", "forward"]},
    }}}},
}

from apt_sdk import Callback, hookimpl  # noqa: E402


class Boom(Callback):
    def __init__(self, at_step, rank, where, context):
        self.at_step, self.where = at_step, where
        self.armed = rank in (-1, context.rank)
        self.step = 0

    def explode(self, step):
        raise RuntimeError(f"boom at step {step} in /tmp/some/file.py, token=hunter2")

    def on_fit_start(self, trainer):
        if self.where == "forward":
            def pre_forward(module, args):
                if self.armed and module.training and self.step + 1 == self.at_step:
                    self.explode(self.step + 1)
            trainer.model.register_forward_pre_hook(pre_forward)

    def on_train_batch_end(self, trainer, step, metrics):
        self.step = step
        if self.where == "callback" and self.armed and step == self.at_step:
            self.explode(step)


@hookimpl
def register_callbacks(register):
    register("boom", lambda options, context: Boom(**options, context=context))

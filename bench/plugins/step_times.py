"""A callback plugin for benchmarks through `apt-kernel run`: the wall time of every optimizer step (from one
on_train_batch_end to the next) and every step's loss, written to a JSON file at the end of the run. Loaded with
`--plugins-dir bench/plugins`."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"step-times": {"summary": "per-step wall times and losses to a JSON file (benchmarks)",
                                             "options": {"path": {"type": "str", "help": "the JSON file"}}}}},
}

import json  # noqa: E402
import time  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402


class StepTimes(Callback):
    def __init__(self, path: str) -> None:
        self.path, self.ends = path, []

    def on_train_batch_end(self, trainer, step, metrics) -> None:
        self.ends.append(time.perf_counter())

    def on_fit_end(self, trainer, result) -> None:
        times = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        with open(self.path, "w") as fh:
            json.dump({"step_seconds": times, "losses": list(trainer.losses)}, fh)


@hookimpl
def register_callbacks(register):
    register("step-times", lambda options, context: StepTimes(options["path"]))

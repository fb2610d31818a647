"""A test plugin: rank 0 imports it slowly and every other rank's component writes into the run folder
as soon as it is built, so a worker's file is there before rank 0 looks at the folder."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"callback": {"early-writer": {"options": {}}}},
}

import os  # noqa: E402
import time  # noqa: E402

from apt_sdk import Callback, hookimpl  # noqa: E402

if os.environ.get("RANK") == "0":
    time.sleep(3)


class EarlyWriter(Callback):
    def __init__(self, context):
        if context.rank != 0:
            context.run_dir.mkdir(parents=True, exist_ok=True)
            (context.run_dir / f"rank{context.rank}.log").write_text("opened while the component was built\n")


@hookimpl
def register_callbacks(register):
    register("early-writer", lambda options, context: EarlyWriter(context))

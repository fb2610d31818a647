"""A test plugin (loaded with --plugins-dir): the LM's test data of variable-length sequences padded per
micro-batch (``apt_plugin_lm.testing_runs.PaddedSequences``), so ranks see different numbers of real tokens."""

APT_MANIFEST = {
    "kernel_api": "^1.0",
    "version": "1.0.0",
    "provides": {"data": {"padded-sequences": {"options": {"batch_size": {"type": "int", "default": 8}}}}},
}

from apt_plugin_lm.testing_runs import PaddedSequences  # noqa: E402
from apt_sdk import hookimpl  # noqa: E402


@hookimpl
def register_data(register):
    register("padded-sequences", lambda options, context: PaddedSequences(**options))

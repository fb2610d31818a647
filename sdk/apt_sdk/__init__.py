"""The SDK for APT Kernel plugins: everything a plugin needs, and nothing it should not depend on.

A plugin is a module with ``@hookimpl`` functions (see ``apt_kernel.hookspecs``) and a static
``apt-plugin.toml`` manifest. Components are built by factories ``factory(options, context)``.
"""

from apt_kernel import KERNEL_API_VERSION
from apt_kernel.context import BuildContext
from apt_kernel.errors import PipelineError, RunInterrupted, UserError
from apt_kernel.hookspecs import hookimpl
from apt_kernel.manifest import MANIFEST_FILE, Manifest, parse_manifest, read_manifest_file
from apt_kernel.runner import check_pipeline, run_pipeline

from .components import Callback, DataModule, Encoder, Loss, Trainer

__all__ = [
    "KERNEL_API_VERSION", "MANIFEST_FILE", "BuildContext", "Callback", "DataModule", "Encoder", "Loss",
    "Manifest", "PipelineError", "RunInterrupted", "Trainer", "UserError", "check_pipeline", "hookimpl",
    "parse_manifest", "read_manifest_file", "run_pipeline",
]

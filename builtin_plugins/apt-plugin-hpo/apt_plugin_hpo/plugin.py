"""apt-plugin-hpo: the `optuna-pruning` callback; the `apt-kernel hpo` command is declared in the manifest."""

from apt_sdk import hookimpl

from .pruning import build_pruning


@hookimpl
def register_callbacks(register):
    register("optuna-pruning", build_pruning, summary="Report validation loss to the running Optuna trial")

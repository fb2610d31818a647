"""Registers the APT trainer and the early-stopping callback."""

from __future__ import annotations

from apt_sdk import BuildContext, OptionError, folder_problem, hookimpl


def build_trainer(options: dict, context: BuildContext):
    from .distributed import check_device
    from .end_of_run import rebuildable
    from .options import TrainerOptions
    from .trainer import Trainer

    check_device(options["device"])
    # found now, not at the first save with a traceback (the run folder is the kernel's to check)
    if options["checkpoint_dir"] and (problem := folder_problem(options["checkpoint_dir"])):
        existing, why = problem
        folder = options["checkpoint_dir"]
        raise OptionError("checkpoint_dir", f"{folder} cannot be a folder: {existing} is a file" if why == "a file"
                          else f"{folder} cannot be created: {existing} is not writable")
    if options["strategy"] == "fsdp" and options["export"] is not False and not rebuildable(context.model):
        # now, not after the whole run: model/ of an FSDP run is written from a model rebuilt on rank 0
        raise OptionError("strategy", f"\"fsdp\" writes model/ from a model rebuilt from its config, and "
                          f"{type(context.model).__name__} has no config and from_config(config) (the Model "
                          "protocol's rebuild): set export = false, or strategy = \"ddp\"")
    if options.get("export_on_improvement") and options["export"] is False:
        raise OptionError("export_on_improvement", "writes model/ at every new best, but export = false asks for "
                                                   "no model/: set export = \"best\", or leave this out")
    return Trainer(TrainerOptions.from_options(options))  # its resume_from comes back to the kernel as .resume


@hookimpl
def register_trainers(register):
    register("apt-trainer", build_trainer, summary="AdamW + warmup/cosine, validation, checkpoints, callbacks")


def build_early_stopping(options: dict, context: BuildContext):
    from .early_stopping import EarlyStopping

    return EarlyStopping(**options)


@hookimpl
def register_callbacks(register):
    register("early-stopping", build_early_stopping, summary="Stop when validation stops improving")

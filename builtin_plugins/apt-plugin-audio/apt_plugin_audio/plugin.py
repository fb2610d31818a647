"""Registers the ``whisper`` encoder."""

from __future__ import annotations

from apt_sdk import BuildContext, OptionError, UserError, hookimpl

from .hub import HubUnavailable  # light: huggingface_hub is imported only when a hub id is loaded


def build_whisper(options: dict, context: BuildContext):
    from .encoder import AudioEncoder, frames_for

    try:
        frames_for(options["max_seconds"])
    except ValueError as exc:
        raise OptionError("max_seconds", str(exc)) from None
    source = options.get("model_name_or_path")
    try:
        return AudioEncoder(model_name_or_path=source, size=options["size"], max_seconds=options["max_seconds"],
                            freeze_encoder=options["freeze_encoder"])
    except HubUnavailable as exc:  # the encoder's advice is Python's: say what to run and what to set
        raise OptionError("model_name_or_path", pipeline_advice(exc)) from None
    except UserError as exc:  # named with the pipeline's file and line
        raise OptionError("model_name_or_path" if source else "max_seconds", str(exc)) from None


def pipeline_advice(exc: HubUnavailable) -> str:
    folder = f"models/{exc.name.rstrip('/').rsplit('/', 1)[-1]}"
    return (f"cannot load {exc.name!r}: there is no folder by that name, and as a hub id {exc.reason}. Download it "
            f"where there is a network (hf download {exc.name} --local-dir {folder}), bring that folder here and set "
            f"model_name_or_path = \"{folder}\"; or leave model_name_or_path out to train a new encoder of size = "
            f"\"tiny\", \"small\" or \"base\"")


@hookimpl
def register_encoders(register):
    register("whisper", build_whisper, summary="Whisper audio encoder")

"""Registers the ``whisper`` encoder."""

from __future__ import annotations

from apt_sdk import BuildContext, OptionError, hookimpl
from apt_sdk.pretrained import pipeline_errors  # light: transformers and the hub are imported when used


def build_whisper(options: dict, context: BuildContext):
    from .encoder import AudioEncoder, frames_for

    try:
        frames_for(options["max_seconds"])
    except ValueError as exc:
        raise OptionError("max_seconds", str(exc)) from None
    source = options.get("model_name_or_path")
    with pipeline_errors(source, "max_seconds"):
        return AudioEncoder(model_name_or_path=source, size=options["size"], max_seconds=options["max_seconds"],
                            freeze_encoder=options["freeze_encoder"])


@hookimpl
def register_encoders(register):
    register("whisper", build_whisper, summary="Whisper audio encoder")

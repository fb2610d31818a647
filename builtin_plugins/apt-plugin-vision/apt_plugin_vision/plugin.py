"""Registers the ``clip`` encoder."""

from __future__ import annotations

from apt_sdk import BuildContext, OptionError, hookimpl
from apt_sdk.pretrained import pipeline_errors  # light: transformers and the hub are imported when used


def build_clip(options: dict, context: BuildContext):
    from .encoder import VisionEncoder

    source, image_size = options.get("model_name_or_path"), options.get("image_size")
    if source and image_size:
        raise OptionError("image_size", "sets the size of a new encoder; saved weights bring their own "
                                        "(drop image_size or model_name_or_path)")
    with pipeline_errors(source, "image_size"):
        return VisionEncoder(model_name_or_path=source, config={"image_size": image_size} if image_size else None,
                             size=options["size"], freeze_encoder=options["freeze_encoder"])


@hookimpl
def register_encoders(register):
    register("clip", build_clip, summary="CLIP image encoder (ViT)")

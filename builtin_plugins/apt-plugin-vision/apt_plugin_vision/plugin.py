"""Registers the ``clip`` encoder."""

from __future__ import annotations

from apt_sdk import BuildContext, OptionError, UserError, hookimpl


def build_clip(options: dict, context: BuildContext):
    from .encoder import VisionEncoder

    source, image_size = options.get("model_name_or_path"), options.get("image_size")
    if source and image_size:
        raise OptionError("image_size", "sets the size of a new encoder; saved weights bring their own "
                                        "(drop image_size or model_name_or_path)")
    try:
        return VisionEncoder(model_name_or_path=source, config={"image_size": image_size} if image_size else None,
                             size=options["size"], freeze_encoder=options["freeze_encoder"])
    except UserError as exc:  # named with the pipeline's file and line
        raise OptionError("model_name_or_path" if source else "image_size", str(exc)) from None


@hookimpl
def register_encoders(register):
    register("clip", build_clip, summary="CLIP image encoder (ViT)")

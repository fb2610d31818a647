"""Registers ``small-cnn`` and ``mel-cnn``."""

from apt_sdk import BuildContext, hookimpl


def build_image(options: dict, context: BuildContext):
    from .image import SmallCNN

    encoder = SmallCNN(options["image_size"], options["channels"], options["output_dim"])
    return encoder.freeze(options["freeze_encoder"])


def build_audio(options: dict, context: BuildContext):
    from .audio import MelCNN

    encoder = MelCNN(options["max_seconds"], options["mel_bins"], options["channels"], options["output_dim"])
    return encoder.freeze(options["freeze_encoder"])


@hookimpl
def register_encoders(register):
    register("small-cnn", build_image, summary="Grey images through a small CNN")
    register("mel-cnn", build_audio, summary="Log-mel spectrograms through a small 1-D CNN")

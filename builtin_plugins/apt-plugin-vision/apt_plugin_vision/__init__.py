"""CLIP image encoder plugin: ``VisionEncoder``, ``ImagePreprocessor`` and ``load_image``."""

__version__ = "0.1.1"

__all__ = ["ImagePreprocessor", "VisionEncoder", "load_image", "to_rgb"]


def __getattr__(name: str):
    # torch and transformers are imported when the encoder is used, not when the plugin is discovered
    if name == "VisionEncoder":
        from .encoder import VisionEncoder

        return VisionEncoder
    if name == "ImagePreprocessor":
        from .preprocess import ImagePreprocessor

        return ImagePreprocessor
    if name in ("load_image", "to_rgb"):
        from . import images

        return getattr(images, name)
    raise AttributeError(name)

"""Multimodal APT: ``CrossModalAttention``, ``MultimodalFusion`` and ``MultimodalAPTModel``."""

__version__ = "0.1.0"

__all__ = ["CrossModalAttention", "MultimodalAPTModel", "MultimodalConfig", "MultimodalFusion"]


def __getattr__(name: str):
    # torch and the encoders are imported when used, not when the plugin is discovered
    if name in ("CrossModalAttention", "MultimodalFusion"):
        from . import fusion

        return getattr(fusion, name)
    if name in ("MultimodalAPTModel", "MultimodalConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)

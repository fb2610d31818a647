"""Multimodal APT: ``CrossModalAttention``, ``MultimodalFusion``, ``MultimodalAPTModel``, the dataset and
``train_multimodal_model``."""

__version__ = "0.1.1"

__all__ = ["CrossModalAttention", "MultimodalAPTModel", "MultimodalConfig", "MultimodalDataset", "MultimodalFusion",
           "create_multimodal_dataloader", "multimodal_collate_fn", "train_multimodal_model"]

_WHERE = {"CrossModalAttention": "fusion", "MultimodalFusion": "fusion", "MultimodalAPTModel": "model",
          "MultimodalConfig": "model", "MultimodalDataset": "dataset", "multimodal_collate_fn": "dataset",
          "create_multimodal_dataloader": "dataset", "train_multimodal_model": "train"}


def __getattr__(name: str):
    # torch and the encoders are imported when used, not when the plugin is discovered
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)

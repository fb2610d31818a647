"""``VisionEncoder``: a CLIP image tower (transformers' ``CLIPVisionModelWithProjection``) behind the
kernel's ``Encoder`` contract, with the original plan's API (``encode_image``, ``encode_batch``,
``patch_features``).

Weights come from one of three places: a local ``save_pretrained`` folder (a whole ``CLIPModel`` or a
vision tower), a hub id where a hub is reachable, or a config built here (random init, trainable from
scratch) from a size preset. Preprocessing is transformers' ``CLIPImageProcessor`` (its PIL backend);
it lives in ``ImagePreprocessor``, a small picklable object, so DataLoader workers run it and the
training process only runs the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, CLIPConfig, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.utils import logging as hf_logging

from apt_sdk import UserError, check_known_keys

from .hub import from_hub
from .images import ImageSource
from .preprocess import ImagePreprocessor
from .stem import STEMS, ConvStem

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8, projection_dim=16),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  image_size=64, patch_size=8, projection_dim=256),
    # ViT-B/32, the shape of openai/clip-vit-base-patch32's image tower
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=32, projection_dim=512),
}
MODEL_TYPES = ("clip",)


class VisionEncoder(nn.Module):
    """A CLIP image encoder.

    :param model_type: ``"clip"`` (the only family this plugin provides).
    :param model_name_or_path: a local folder written by ``save_pretrained`` (``CLIPModel`` or
        ``CLIPVisionModelWithProjection``), or a hub id where a hub is reachable. ``None``: build from
        ``config``/``size`` with random weights.
    :param config: a ``CLIPVisionConfig``/``CLIPConfig``, or a dict of ``CLIPVisionConfig`` fields laid
        over the ``size`` preset (e.g. ``{"image_size": 64}``).
    :param size: the preset when building from a config: ``tiny`` (tests), ``small`` (CPU tasks),
        ``base`` (ViT-B/32: 224 px, 32 px patches, 768 wide, 12 layers, 512-d embeddings).
    :param freeze_encoder: no gradients (``requires_grad`` off, forward under ``no_grad``), always in eval
        mode (no dropout), so an optimizer over ``parameters()`` that skips frozen ones holds nothing of it.
    :param position_std: for a new encoder, initialise the position embeddings with this standard deviation
        instead of CLIP's 0.02. At 0.02 positions are a small fraction of the patch embeddings, and a tower
        trained from scratch learns *where* things are very slowly. At 1.0 it learned "is the red object
        left or right" in 1,000 steps where 0.02 stayed at chance after 1,500. Global tasks such as
        digits do better at 0.02.
    :param stem: for a new encoder, how pixels become tokens: ``"patches"`` (CLIP's linear patch
        embedding) or ``"conv"`` (``ConvStem``: stride-2 convolutions and coordinate channels, on the same
        grid). Saved in the config as ``stem``, so a saved encoder rebuilds its own.

    ``output_dim`` is the embedding width D (``encode_batch`` gives ``[B, D]``); ``vision_dim`` and
    ``num_tokens`` describe ``patch_features``: ``[B, num_tokens, vision_dim]``, the class token first.
    """

    def __init__(self, model_type: str = "clip", model_name_or_path: str | Path | None = None,
                 config: CLIPVisionConfig | CLIPConfig | dict | None = None, size: str = "base",
                 freeze_encoder: bool = True, position_std: float | None = None, stem: str | None = None):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise UserError(f"model_type {model_type!r} is not supported: this plugin provides "
                            f"{', '.join(MODEL_TYPES)}")
        if model_name_or_path is not None and config is not None:
            raise UserError("pass model_name_or_path (saved weights) or config (a new encoder), not both")
        if stem is not None and stem not in STEMS:
            raise UserError(f"stem {stem!r} is not one of {', '.join(STEMS)}")
        if model_name_or_path is not None:
            if stem is not None:
                raise UserError("stem sets how a new encoder embeds pixels; saved weights bring their own (drop stem)")
            self.model, processor = _load(str(model_name_or_path))
        else:
            vision_config = _build_config(config, size)
            if stem is not None:
                vision_config.stem = stem
            self.model = _tower(vision_config)
            if position_std is not None:
                with torch.no_grad():
                    self.model.vision_model.embeddings.position_embedding.weight.normal_(0.0, position_std)
            processor = ImagePreprocessor.for_size(vision_config.image_size).processor
        self.preprocessor = ImagePreprocessor(processor)
        config = self.model.config
        if self.preprocessor.image_size != config.image_size:
            raise UserError(f"the image processor crops to {self.preprocessor.image_size} px but the model expects "
                            f"{config.image_size} px")
        self.model_type = model_type
        self.output_dim = int(config.projection_dim)
        self.vision_dim = int(config.hidden_size)
        self.num_tokens = 1 + (config.image_size // config.patch_size) ** 2
        self.frozen = False
        if freeze_encoder:
            self.freeze()

    def freeze(self, frozen: bool = True) -> VisionEncoder:
        """Freeze (``requires_grad`` off, eval mode, forward under ``no_grad``) or, with False, unfreeze the tower:
        its weights train again and it follows ``train()``/``eval()``. Saved with a multimodal model."""
        self.frozen = frozen
        self.model.requires_grad_(not frozen)
        self.model.train(self.training and not frozen)
        return self

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a parent's .train() must not switch dropout back on in a frozen encoder
        return self

    def preprocess(self, images: Sequence[ImageSource], where: Sequence[str | None] | None = None) -> torch.Tensor:
        """Pixel values ``[B, 3, S, S]`` on the CPU (what a DataLoader worker produces)."""
        return self.preprocessor(images, where)

    def forward(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        """Pooled, projected embeddings ``[B, output_dim]`` of a list of images or pixel values ``[B, 3, H, W]``."""
        with self._grad_mode():
            return self.model(pixel_values=self._pixels(images)).image_embeds

    def encode_image(self, image: ImageSource) -> torch.Tensor:
        """One image to ``[1, output_dim]``."""
        return self.forward([image])

    def encode_batch(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        """A list of images to ``[B, output_dim]``."""
        return self.forward(images)

    def encode(self, inputs: Any) -> torch.Tensor:
        """The kernel's ``Encoder`` contract: ``encode_batch``."""
        return self.forward(inputs)

    def patch_features(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        """The last layer's token states ``[B, num_tokens, vision_dim]`` (class token first), for fusion."""
        with self._grad_mode():
            return self.model.vision_model(pixel_values=self._pixels(images)).last_hidden_state

    def save_pretrained(self, path: str | Path) -> None:
        """Write the tower and its image processor; ``VisionEncoder(model_name_or_path=path)`` loads it back."""
        with _quiet():  # transformers' "Writing model shards" progress bar
            self.model.save_pretrained(path)
        self.preprocessor.processor.save_pretrained(path)

    def _pixels(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        # a uint8 tensor is pixels, 0-255: it was fed to the tower as they are, without CLIP's normalisation
        pixels = self.preprocessor.pixels(images) if isinstance(images, torch.Tensor) else self.preprocess(images)
        weight = self.model.vision_model.embeddings.patch_embedding.weight
        return pixels.to(device=weight.device, dtype=weight.dtype, non_blocking=True)

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.frozen else contextlib.nullcontext()


def _build_config(config: CLIPVisionConfig | CLIPConfig | dict | None, size: str) -> CLIPVisionConfig:
    if isinstance(config, CLIPConfig):
        return _vision_part(config)
    if isinstance(config, CLIPVisionConfig):
        return config
    if size not in SIZES:
        raise UserError(f"size {size!r} is not a preset: choose one of {', '.join(SIZES)}")
    if config is not None and not isinstance(config, dict):
        raise UserError(f"config must be a CLIPVisionConfig, a CLIPConfig or a dict, got {type(config).__name__}")
    _check_fields(config or {}, CLIPVisionConfig)
    fields = {**SIZES[size], **(config or {})}
    try:
        built = CLIPVisionConfig(**fields)
    except Exception as exc:  # noqa: BLE001 - transformers validates through huggingface_hub's own error types
        raise UserError(f"invalid CLIP vision config {fields}: {str(exc).strip().splitlines()[-1].strip()}") from None
    if built.hidden_size % built.num_attention_heads:
        raise UserError(f"invalid CLIP vision config: hidden_size {built.hidden_size} must divide by "
                        f"num_attention_heads {built.num_attention_heads}")
    if built.image_size % built.patch_size:
        raise UserError(f"invalid CLIP vision config: image_size {built.image_size} must divide by "
                        f"patch_size {built.patch_size}")
    return built


def _tower(config: CLIPVisionConfig) -> CLIPVisionModelWithProjection:
    """A new tower; with ``config.stem == "conv"`` its patch embedding is a ``ConvStem``."""
    model = CLIPVisionModelWithProjection(config)
    if getattr(config, "stem", "patches") == "conv":
        model.vision_model.embeddings.patch_embedding = ConvStem(config.hidden_size, config.image_size,
                                                                 config.patch_size, config.num_channels)
    return model


def _check_fields(fields: dict, config_class: type) -> None:
    """A misspelt field would be kept by transformers as an unused attribute and the preset's value used
    instead, so a typo must fail here. A config saved by ``to_dict`` (it names its ``model_type``) is
    exempt: it may hold fields of another transformers version, and its values are already the model's."""
    if fields.get("model_type") != config_class.model_type:
        check_known_keys(fields, config_class().to_dict(), f"{config_class.__name__} field")


def _vision_part(config: CLIPConfig) -> CLIPVisionConfig:
    """A whole CLIP's image tower config, with the projection width that lives on the outer config."""
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    return vision


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' load report and progress bar are noise when a CLIP folder's text tower is skipped on purpose."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(name: str) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessorPil]:
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise UserError(f"model_name_or_path {name!r} is a file: pass the folder save_pretrained wrote")
    if local.is_dir():
        try:
            model, info, processor = _read(str(local), name, local, local_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load CLIP weights from folder {str(local)!r}: {exc}") from None
    else:
        model, info, processor = from_hub(name, lambda local_only: _read(name, name, local, local_only),
                                          f"Download it where there is a network (hf download {name} --local-dir "
                                          f"DIR) and pass model_name_or_path=DIR, or build from a config: "
                                          f"model_name_or_path=None with size='tiny'|'small'|'base' or config=...")
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise UserError(f"{name!r} lacks {len(missing)} weights of a CLIP image tower with projection "
                        f"(e.g. {', '.join(missing[:3])}): save a CLIPModel or CLIPVisionModelWithProjection")
    return model.eval(), processor


def _read(source: str, name: str, local: Path, local_only: bool
          ) -> tuple[CLIPVisionModelWithProjection, dict, CLIPImageProcessorPil]:
    with _quiet():
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        if config.model_type not in ("clip", "clip_vision_model"):
            raise UserError(f"{name!r} holds a {config.model_type!r} model, not CLIP")
        vision = _vision_part(config) if isinstance(config, CLIPConfig) else config
        stem = getattr(vision, "stem", "patches")
        if stem not in STEMS:
            raise UserError(f"{name!r} has stem {stem!r}, not one of {', '.join(STEMS)}")
        if stem == "conv":  # a layout transformers does not know: build it, then load the saved tensors
            model = _tower(vision)
            info = _load_tensors(model, local)
        else:
            model, info = CLIPVisionModelWithProjection.from_pretrained(source, config=vision, output_loading_info=True,
                                                                        local_files_only=local_only)
        return model, info, _processor(source, vision.image_size, local_only)


def _load_tensors(model: CLIPVisionModelWithProjection, folder: Path) -> dict[str, list[str]]:
    """A conv-stem tower's weights from the ``model.safetensors`` its ``save_pretrained`` wrote."""
    from safetensors.torch import load_model

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{str(folder)!r} has a conv-stem config but no model.safetensors (only a folder written "
                        f"by VisionEncoder.save_pretrained holds one)")
    missing, unexpected = load_model(model, str(weights), strict=False)
    if unexpected:
        raise UserError(f"{weights} holds tensors this conv-stem tower does not have (e.g. "
                        f"{', '.join(sorted(unexpected)[:3])}): it was saved from another model")
    return {"missing_keys": list(missing)}


def _processor(source: str, image_size: int, local_only: bool) -> CLIPImageProcessorPil:
    try:
        return CLIPImageProcessorPil.from_pretrained(source, local_files_only=local_only)
    except OSError:
        # a folder with weights but no preprocessor_config.json: CLIP's standard preprocessing at the model's size
        return ImagePreprocessor.for_size(image_size).processor

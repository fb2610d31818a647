"""``VisionEncoder``: a CLIP image tower (transformers' ``CLIPVisionModelWithProjection``) as the kernel's
``Encoder`` (``encode``: the patch features a multimodal model attends to), with the original plan's API
(``encode_image``, ``encode_batch``: pooled, projected embeddings; ``patch_features``).

Weights come from one of three places: a local ``save_pretrained`` folder (a whole ``CLIPModel`` or a
vision tower), a hub id where a hub is reachable, or a config built here (random init, trainable from
scratch) from a size preset. Preprocessing is transformers' ``CLIPImageProcessor`` (its PIL backend);
it lives in ``ImagePreprocessor``, a small picklable object, so DataLoader workers run it and the
training process only runs the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, CLIPConfig, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

from apt_sdk import UserError
from apt_sdk.encoders import EncoderConfig, EncoderModule
from apt_sdk.pretrained import check_divides, check_source, load_pretrained, preset_config, quiet_transformers

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


class VisionEncoder(EncoderModule):
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

    As an ``Encoder``: ``modality`` is ``"image"``; ``encode(pixels)`` gives the last layer's tokens
    ``[B, num_tokens, output_dim]``, the class token first (``output_dim``, also ``vision_dim``, is the tower's
    width). ``embed_dim`` is the width of the pooled, projected embeddings ``encode_batch`` gives ``[B, D]``.
    """

    modality = "image"

    def __init__(self, model_type: str = "clip", model_name_or_path: str | Path | None = None,
                 config: CLIPVisionConfig | CLIPConfig | dict | None = None, size: str = "base",
                 freeze_encoder: bool = True, position_std: float | None = None, stem: str | None = None):
        super().__init__()
        check_source(model_type, MODEL_TYPES, model_name_or_path, config)
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
        self.output_dim = self.vision_dim = int(config.hidden_size)
        self.embed_dim = int(config.projection_dim)
        self.num_tokens = 1 + (config.image_size // config.patch_size) ** 2
        self.freeze(freeze_encoder)

    @property
    def config(self) -> EncoderConfig:
        """The tower's config and the image processor's settings: ``from_config`` rebuilds this encoder."""
        return EncoderConfig(model=self.model.config.to_dict(), preprocessor=self.preprocessor.processor.to_dict())

    @classmethod
    def from_config(cls, config: dict) -> VisionEncoder:
        """A tower of the saved shape with fresh weights and the saved image processor. Also takes what a
        multimodal model saved before encoders were recorded: the tower's config alone."""
        fields = config.get("model", config)
        encoder = cls(config=CLIPVisionConfig.from_dict(fields), freeze_encoder=False)
        if "preprocessor" in config:
            encoder.preprocessor = ImagePreprocessor(CLIPImageProcessorPil.from_dict(config["preprocessor"]))
        return encoder

    def preprocess(self, images: Sequence[ImageSource], where: Sequence[str | None] | None = None) -> torch.Tensor:
        """Pixel values ``[B, 3, S, S]`` on the CPU (what a DataLoader worker produces)."""
        return self.preprocessor(images, where)

    def forward(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        """Pooled, projected embeddings ``[B, embed_dim]`` of a list of images or pixel values ``[B, 3, H, W]``."""
        with self.frozen_grad():
            return self.model(pixel_values=self._pixels(images)).image_embeds

    def encode_image(self, image: ImageSource) -> torch.Tensor:
        """One image to ``[1, embed_dim]``."""
        return self.forward([image])

    def encode_batch(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        """A list of images to ``[B, embed_dim]``."""
        return self.forward(images)

    def encode(self, inputs: Any, mask: Any = None) -> tuple[torch.Tensor, None]:
        """The ``Encoder`` contract: ``(patch_features(inputs), None)``; every image has ``num_tokens`` tokens."""
        return self.patch_features(inputs), None

    def patch_features(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        """The last layer's token states ``[B, num_tokens, vision_dim]`` (class token first), for fusion."""
        with self.frozen_grad():
            return self.model.vision_model(pixel_values=self._pixels(images)).last_hidden_state

    def save_pretrained(self, path: str | Path) -> None:
        """Write the tower and its image processor; ``VisionEncoder(model_name_or_path=path)`` loads it back."""
        with quiet_transformers():  # transformers' "Writing model shards" progress bar
            self.model.save_pretrained(path)
        self.preprocessor.processor.save_pretrained(path)

    def _pixels(self, images: Sequence[ImageSource] | torch.Tensor) -> torch.Tensor:
        # a uint8 tensor is pixels, 0-255: it was fed to the tower as they are, without CLIP's normalisation
        pixels = self.preprocessor.pixels(images) if isinstance(images, torch.Tensor) else self.preprocess(images)
        weight = self.model.vision_model.embeddings.patch_embedding.weight
        return pixels.to(device=weight.device, dtype=weight.dtype, non_blocking=True)


def _build_config(config: CLIPVisionConfig | CLIPConfig | dict | None, size: str) -> CLIPVisionConfig:
    if isinstance(config, CLIPConfig):
        return _vision_part(config)
    if isinstance(config, CLIPVisionConfig):
        return config
    built = preset_config(CLIPVisionConfig, SIZES, size, config, "CLIP vision", "a CLIPVisionConfig, a CLIPConfig")
    check_divides("CLIP vision", built, ("hidden_size", "num_attention_heads"), ("image_size", "patch_size"))
    return built


def _tower(config: CLIPVisionConfig) -> CLIPVisionModelWithProjection:
    """A new tower; with ``config.stem == "conv"`` its patch embedding is a ``ConvStem``."""
    model = CLIPVisionModelWithProjection(config)
    if getattr(config, "stem", "patches") == "conv":
        model.vision_model.embeddings.patch_embedding = ConvStem(config.hidden_size, config.image_size,
                                                                 config.patch_size, config.num_channels)
    return model


def _vision_part(config: CLIPConfig) -> CLIPVisionConfig:
    """A whole CLIP's image tower config, with the projection width that lives on the outer config."""
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    return vision


def _load(name: str) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessorPil]:
    model, info, processor = load_pretrained(name, lambda source, local_only: _read(source, name, local_only), "CLIP")
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise UserError(f"{name!r} lacks {len(missing)} weights of a CLIP image tower with projection "
                        f"(e.g. {', '.join(missing[:3])}): save a CLIPModel or CLIPVisionModelWithProjection")
    return model.eval(), processor


def _read(source: str, name: str,
          local_only: bool) -> tuple[CLIPVisionModelWithProjection, dict, CLIPImageProcessorPil]:
    with quiet_transformers():
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        if config.model_type not in ("clip", "clip_vision_model"):
            raise UserError(f"{name!r} holds a {config.model_type!r} model, not CLIP")
        vision = _vision_part(config) if isinstance(config, CLIPConfig) else config
        stem = getattr(vision, "stem", "patches")
        if stem not in STEMS:
            raise UserError(f"{name!r} has stem {stem!r}, not one of {', '.join(STEMS)}")
        if stem == "conv":  # a layout transformers does not know: build it, then load the saved tensors
            model = _tower(vision)
            info = _load_tensors(model, Path(source))
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

"""``ImagePreprocessor``: images to CLIP pixel values, in a small picklable object without the network, so
DataLoader workers run it and the training process only runs the tower."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from apt_sdk import UserError

from .images import ImageSource, load_image


class ImagePreprocessor:
    """Images (PIL, paths or bytes; any mode, any size up to Pillow's limit) to CLIP pixel values
    ``[B, 3, S, S]``: transformers' ``CLIPImageProcessor`` (PIL backend), after ``load_image`` has made
    each one RGB and decoded a large file at about twice the size the resize needs, not in full.

    Picklable and free of the network, so it can be a DataLoader worker's collate function: the ``Preprocessor``
    of the kernel's ``Encoder`` contract.
    """

    def __init__(self, processor: CLIPImageProcessorPil):
        self.processor = processor
        self.image_size = int(processor.crop_size["height"])
        size = processor.size or {}
        # what the resize makes of an image's short side: a file is decoded at no less than twice that
        self.resize_to = int(size.get("shortest_edge") or min(size.get("height", self.image_size),
                                                               size.get("width", self.image_size)))

    @classmethod
    def for_size(cls, image_size: int) -> ImagePreprocessor:
        """CLIP's standard preprocessing to ``image_size`` pixels square (what a from-config encoder uses)."""
        return cls(CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size}))

    def __call__(self, images: Sequence[ImageSource], where: Sequence[str | None] | None = None) -> torch.Tensor:
        if isinstance(images, Image.Image | str | bytes | Path):
            raise UserError(f"expected a list of images, got one {type(images).__name__}: wrap it in a list")
        if not len(images):
            raise UserError("no images to encode (an empty list)")
        labels = list(where) if where is not None else [None] * len(images)
        rgb = [load_image(image, label or (None if not isinstance(image, Image.Image) else f"image {i} of the batch"),
                          size=self.resize_to)
               for i, (image, label) in enumerate(zip(images, labels, strict=True))]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel values of a ready tensor ``[B, 3, H, W]``: float values are taken as already preprocessed
        (what ``__call__`` returns); ``uint8`` ones are 0-255 RGB pixels, resized, cropped and normalised here."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"pixel values must be [batch, 3, height, width], got {list(images.shape)}")
        if images.dtype == torch.uint8:
            arrays = images.detach().cpu().permute(0, 2, 3, 1).numpy()
            return self([Image.fromarray(np.ascontiguousarray(a), "RGB") for a in arrays])
        if not images.is_floating_point():
            raise UserError(f"pixel values of dtype {str(images.dtype).removeprefix('torch.')}: give uint8 pixels "
                            f"(0-255) or the float pixel values the preprocessor makes")
        if tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise UserError(f"pixel values are {images.shape[2]}x{images.shape[3]} but this vision tower takes "
                            f"{self.image_size}x{self.image_size} (pass PIL images or paths, or uint8 pixels, to have "
                            "them resized)")
        return images

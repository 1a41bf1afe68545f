"""TRELLIS's condition-image preprocessing, with the crop exposed so masks can follow it exactly.

An RGBA image uses its alpha (an alpha that is 255 everywhere counts as none). The object's box is
the bounding box of ``alpha > 0.8·255``; a square of 1.2× its longer side around its centre is
cropped (it may reach past the border: PIL pads with transparent black), resized to 518 with
LANCZOS, and RGB is premultiplied by alpha on black.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

SIZE = 518


class PreprocessError(ValueError):
    pass


@dataclass(frozen=True)
class Preprocessed:
    """A preprocessed condition image.

    Attributes:
        image: RGB, ``518×518``, premultiplied on black — what the encoder sees.
        alpha: ``[518, 518]`` float32 alpha in ``[0, 1]`` after the same crop and resize.
        crop_box: ``(left, top, right, bottom)`` in source pixels, as given to ``PIL.Image.crop``.
        source_size: ``(width, height)`` of the source image.
    """

    image: Image.Image
    alpha: np.ndarray
    crop_box: Tuple[float, float, float, float]
    source_size: Tuple[int, int]

    def transform_mask(self, mask: np.ndarray) -> np.ndarray:
        """Move a source-resolution mask (``[H, W]``, non-zero = selected) into the 518×518 frame.

        The mask goes through the image's crop and the same LANCZOS resize (as an 8-bit image); a
        pixel is selected where the result is at least half on.
        """
        mask = np.asarray(mask)
        if mask.shape != (self.source_size[1], self.source_size[0]):
            raise PreprocessError(
                f"mask size {mask.shape[1]}×{mask.shape[0]} does not match the image size "
                f"{self.source_size[0]}×{self.source_size[1]}"
            )
        m = Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8), mode="L")
        m = m.crop(self.crop_box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        return np.asarray(m) >= 128


def has_alpha(image: Image.Image) -> bool:
    """True for an RGBA image whose alpha is not 255 everywhere."""
    if image.mode != "RGBA":
        return False
    return not bool(np.all(np.asarray(image)[:, :, 3] == 255))


def preprocess_image(
    image: Image.Image, remove_background: Optional[Callable[[Image.Image], Image.Image]] = None
) -> Preprocessed:
    """Crop, resize and premultiply a condition image as TRELLIS does.

    Args:
        image: the condition image. RGBA with a real alpha is used as is.
        remove_background: ``f(RGB image) -> RGBA image`` used when there is no alpha. Without one,
            an image lacking alpha is an error.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if has_alpha(image):
        rgba = image
    else:
        if remove_background is None:
            raise PreprocessError(
                "the image has no alpha channel (or an alpha that is opaque everywhere); give an RGBA "
                "image with the object cut out, or pass remove_background=..."
            )
        rgba = remove_background(image.convert("RGB")).convert("RGBA")
    arr = np.asarray(rgba)
    alpha = arr[:, :, 3]
    fg = np.argwhere(alpha > 0.8 * 255)
    if fg.size == 0:
        raise PreprocessError("the image has no foreground: no pixel has alpha above 0.8")
    x0, y0 = fg[:, 1].min(), fg[:, 0].min()
    x1, y1 = fg[:, 1].max(), fg[:, 0].max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = int(max(x1 - x0, y1 - y0) * 1.2)
    box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
    cropped = rgba.crop(box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    out = np.asarray(cropped).astype(np.float32) / 255
    rgb = out[:, :, :3] * out[:, :, 3:4]
    return Preprocessed(
        image=Image.fromarray((rgb * 255).astype(np.uint8)),
        alpha=out[:, :, 3].copy(),
        crop_box=tuple(float(v) for v in box),
        source_size=rgba.size,
    )

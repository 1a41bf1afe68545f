"""TRELLIS's condition-image preprocessing, with the crop exposed so masks can follow it exactly.

An RGBA image uses its alpha (an alpha that is 255 everywhere counts as none). The object's box is
the bounding box of ``alpha > 0.8·255``; a square of 1.2× its longer side around its centre is
cropped (it may reach past the border: PIL pads with transparent black), resized to 518 with
LANCZOS, and RGB is premultiplied by alpha on black.

Images without alpha need one of two things:

- ``background="black"``: the image is already on black (for example one that TRELLIS or the
  published Fuse3D demo already preprocessed); alpha is 255 on every non-black pixel and 0 elsewhere.
- ``remove_background``: ``f(RGB) -> RGBA``, for example :func:`rembg_remover` (TRELLIS uses rembg).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

SIZE = 518
BACKGROUNDS = ("black",)
REMBG_MAX_SIZE = 1024  # TRELLIS shrinks uploads to this longer side before running rembg


class PreprocessError(ValueError):
    pass


@dataclass(frozen=True)
class Preprocessed:
    """A preprocessed condition image.

    Attributes:
        image: RGB, ``518×518``, premultiplied on black — what the encoder sees.
        alpha: ``[518, 518]`` float32 alpha in ``[0, 1]`` after the same crop and resize.
        crop_box: ``(left, top, right, bottom)`` in source pixels, as given to ``PIL.Image.crop``
            (which rounds it: :attr:`pixel_box`).
        source_size: ``(width, height)`` of the source image.
    """

    image: Image.Image
    alpha: np.ndarray
    crop_box: Tuple[float, float, float, float]
    source_size: Tuple[int, int]

    @property
    def pixel_box(self) -> Tuple[int, int, int, int]:
        """The crop box in whole source pixels, rounded exactly as ``PIL.Image.crop`` rounds it."""
        return tuple(int(round(v)) for v in self.crop_box)

    @property
    def crop_size(self) -> int:
        """The longer side of the crop in source pixels (518 / this = the upscale factor)."""
        x0, y0, x1, y1 = self.pixel_box
        return max(x1 - x0, y1 - y0)

    def transform_mask(self, mask: np.ndarray) -> np.ndarray:
        """Move a source-resolution mask (``[H, W]``, non-zero = selected) into the 518×518 frame.

        Coverage rule: an output pixel is selected when any selected source pixel overlaps its
        footprint in the source (the crop maps output pixel ``u`` to source columns
        ``[left + u·w/518, left + (u+1)·w/518)``). So a mask is never thinned by the resize: a 1-px
        stroke survives any downscale, and the result is empty only when the mask lies wholly
        outside the crop.
        """
        mask = np.asarray(mask)
        if mask.shape != (self.source_size[1], self.source_size[0]):
            raise PreprocessError(
                f"mask size {mask.shape[1]}×{mask.shape[0]} does not match the image size "
                f"{self.source_size[0]}×{self.source_size[1]}"
            )
        return self.grid_sums((mask != 0)[..., None], SIZE)[..., 0] > 0

    def grid_sums(self, values: np.ndarray, cells: int) -> np.ndarray:
        """Sums of source-resolution ``values [H, W, C]`` over each cell of a ``cells × cells`` grid
        of the 518² frame (518: its pixels; 37: its patches). A source pixel counts in every cell
        whose footprint it overlaps (exact integer arithmetic; outside the image counts nothing)."""
        values = np.asarray(values)
        h, w = values.shape[:2]
        x0, y0, x1, y1 = self.pixel_box
        xl, xh = _footprints(x0, x1 - x0, w, cells)
        yl, yh = _footprints(y0, y1 - y0, h, cells)
        acc = np.int64 if values.dtype == bool or np.issubdtype(values.dtype, np.integer) else np.float64
        rows = np.zeros((h + 1,) + values.shape[1:], acc)
        np.cumsum(values, axis=0, dtype=acc, out=rows[1:])
        band = rows[yh] - rows[yl]                                      # [cells, W, C]
        cols = np.zeros((cells, w + 1) + values.shape[2:], acc)
        np.cumsum(band, axis=1, out=cols[:, 1:])
        return cols[:, xh] - cols[:, xl]                                # [cells, cells, C]


def _footprints(start: int, length: int, limit: int, cells: int = SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Per cell ``u`` of ``cells`` across the crop, the half-open range ``[lo, hi)`` of source pixels
    (clipped to ``[0, limit)``) that overlap ``[start + u·length/cells, start + (u+1)·length/cells)``,
    in exact integer arithmetic."""
    u = np.arange(cells, dtype=np.int64)
    lo = (start * cells + u * length) // cells                          # floor of the footprint's start
    hi = -((-(start * cells + (u + 1) * length)) // cells)              # ceil of its end
    return np.clip(lo, 0, limit), np.clip(np.maximum(hi, lo), 0, limit)


def has_alpha(image: Image.Image) -> bool:
    """True for an RGBA image whose alpha is not 255 everywhere."""
    if image.mode != "RGBA":
        return False
    return not bool(np.all(np.asarray(image)[:, :, 3] == 255))


def black_border(image: Image.Image) -> bool:
    """True when every pixel on the image's 1-px border is black (RGB 0)."""
    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return not bool(border.any())


def alpha_from_black(image: Image.Image) -> Image.Image:
    """RGBA with alpha 255 on every non-black pixel, 0 on black ones (``background="black"``)."""
    rgb = np.asarray(image.convert("RGB"))
    alpha = np.where(rgb.any(axis=-1), 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def preprocess_image(
    image: Image.Image,
    remove_background: Optional[Callable[[Image.Image], Image.Image]] = None,
    background: Optional[str] = None,
) -> Preprocessed:
    """Crop, resize and premultiply a condition image as TRELLIS does.

    Args:
        image: the condition image. RGBA with a real alpha is used as is.
        remove_background: ``f(RGB image) -> RGBA image`` used when there is no alpha.
        background: ``"black"``: an image without alpha lies on black (alpha = its non-black
            pixels). Without this or ``remove_background``, an image lacking alpha is an error.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if background is not None and background not in BACKGROUNDS:
        raise PreprocessError(f"background must be one of {BACKGROUNDS} or None, got {background!r}")
    if has_alpha(image):
        rgba = image
    elif background == "black":
        rgba = alpha_from_black(image)
    elif remove_background is not None:
        rgba = remove_background(image.convert("RGB")).convert("RGBA")
        if rgba.size != image.size:
            raise PreprocessError(f"remove_background returned a {rgba.size[0]}×{rgba.size[1]} image for a "
                                  f"{image.size[0]}×{image.size[1]} one; it must keep the size")
    else:
        hint = (" Its border is black: if it is already preprocessed (the object on black, as TRELLIS or "
                "the Fuse3D demo leave it), pass background='black'." if black_border(image) else "")
        raise PreprocessError(
            "the image has no alpha channel (or an alpha that is opaque everywhere); give an RGBA "
            "image with the object cut out, or pass remove_background=... (e.g. 'rembg')." + hint
        )
    arr = np.asarray(rgba)
    alpha = arr[:, :, 3]
    fg = np.argwhere(alpha > 0.8 * 255)
    if fg.size == 0:
        raise PreprocessError("the image has no foreground: no pixel has alpha above 0.8")
    x0, y0 = fg[:, 1].min(), fg[:, 0].min()
    x1, y1 = fg[:, 1].max(), fg[:, 0].max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = max(int(max(x1 - x0, y1 - y0) * 1.2), 2)  # ≥ 2 px, so a one-pixel object still crops
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


def rembg_remover(model: str = "u2net") -> Callable[[Image.Image], Image.Image]:
    """A background remover that runs rembg's ``model`` (TRELLIS uses ``"u2net"``).

    The model file is looked up in rembg's own cache (``$U2NET_HOME``, ``$REMBG_HOME``, ``~/.u2net``,
    ``~/.rembg/models/<model>``) and is never fetched: without it this raises, saying where it
    looked and how to get it. As in TRELLIS, an image whose longer side exceeds 1024 px is shrunk to
    1024 for rembg; the mask is then resized back, so the result keeps the input's size and
    pixels (masks drawn on the input stay aligned).
    """
    try:
        import rembg
        from rembg.sessions import sessions_class
    except ImportError as e:
        raise PreprocessError(f"remove_background='rembg' needs rembg: pip install 'fuse3d[rembg]' ({e})") from None
    cls = next((s for s in sessions_class if s.name() == model), None)
    if cls is None:
        raise PreprocessError(f"rembg has no model {model!r}")
    fname = f"{model}.onnx"
    if cls.resolve_existing(fname) is None:
        looked = [str(cls.model_dir()), str(cls.legacy_home())]
        raise PreprocessError(
            f"rembg's model file {fname} is not in rembg's cache (looked in {', '.join(looked)}); fuse3d "
            f"never downloads it. On a machine with network, run `rembg d {model}` and copy the file there "
            "(or set U2NET_HOME to a folder that holds it)."
        )
    session = rembg.new_session(model)

    def remove(image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        small = rgb
        scale = min(1.0, REMBG_MAX_SIZE / max(rgb.size))
        if scale < 1:
            small = rgb.resize((max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))),
                               Image.Resampling.LANCZOS)
        cut = rembg.remove(small, session=session).convert("RGBA")
        alpha = cut.getchannel("A")
        if alpha.size != rgb.size:
            alpha = alpha.resize(rgb.size, Image.Resampling.LANCZOS)
        out = rgb.copy()
        out.putalpha(alpha)
        return out

    remove.model = model  # type: ignore[attr-defined]
    return remove


def upscale_factor(pre: Preprocessed) -> float:
    """How much the crop is enlarged to reach 518 px (> 1 means the encoder sees upscaled pixels)."""
    return SIZE / max(pre.crop_size, 1)


__all__ = ["BACKGROUNDS", "PreprocessError", "Preprocessed", "alpha_from_black", "black_border", "has_alpha",
           "preprocess_image", "rembg_remover", "upscale_factor"]

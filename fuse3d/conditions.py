"""Condition images with their user-selected 2D regions.

A :class:`Condition` is an image plus a mask saying which part of it should steer the 3D asset. The
mask can be a mask image (non-zero = selected), a layer painted over the image
(:meth:`Condition.from_painted`), a box (:meth:`Condition.from_box`) or patch indices of the
37×37 grid (:meth:`Condition.from_patches`). Preparation runs TRELLIS's crop and resize once and
moves the mask through the same transform; the patch grid mask follows a coverage rule.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .method.fusion import foreground_patches, patch_grid_mask
from .trellis.preprocess import Preprocessed, PreprocessError, preprocess_image

ImageLike = Union[str, Path, Image.Image]
PATCH = 14
SIZE = 518
GRID = SIZE // PATCH


class ConditionError(ValueError):
    """A condition image or its mask cannot be used."""


def load_image(image: ImageLike) -> Image.Image:
    """A PIL image from a path or a PIL image (RGBA kept as is; palette/LA converted to RGBA)."""
    if isinstance(image, Image.Image):
        img = image
    else:
        path = Path(image)
        try:
            with Image.open(path) as f:
                img = f.copy()
        except FileNotFoundError:
            raise ConditionError(f"cannot read image {path}: no such file") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ConditionError(f"cannot read image {path}: {e}") from None
    if img.mode in ("P", "LA", "PA", "L") or (img.mode == "RGB" and "transparency" in img.info):
        img = img.convert("RGBA")
    return img


def _as_mask(mask, size: Tuple[int, int]) -> np.ndarray:
    if isinstance(mask, (str, Path)):
        mask = load_image(mask)
    if isinstance(mask, Image.Image):
        arr = np.asarray(mask.convert("RGBA") if mask.mode in ("RGBA", "LA") else mask.convert("L"))
        arr = arr[..., 3] if arr.ndim == 3 else arr
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3:
            arr = arr.any(axis=-1)
    if arr.ndim != 2:
        raise ConditionError(f"a mask must be 2D, got shape {arr.shape}")
    if arr.shape != (size[1], size[0]):
        raise ConditionError(f"mask size {arr.shape[1]}×{arr.shape[0]} does not match the image size {size[0]}×{size[1]}")
    return arr != 0


@dataclass(frozen=True)
class Prepared:
    """A condition after TRELLIS preprocessing.

    Attributes:
        pre: the preprocessed image (518×518 RGB on black), its alpha and the crop box.
        pixel_mask: ``[518, 518]`` bool user mask in the preprocessed frame (``None`` = no mask).
        foreground: ``[37, 37]`` bool, patches with any non-black pixel.
        selected: ``[37, 37]`` bool, the user's patches (coverage rule) within the foreground;
            the whole foreground when there is no mask.
    """

    pre: Preprocessed
    pixel_mask: Optional[np.ndarray]
    foreground: np.ndarray
    selected: np.ndarray

    @property
    def image(self) -> Image.Image:
        return self.pre.image

    @property
    def selected_share(self) -> float:
        """Selected patches / all patches of the image."""
        return float(self.selected.sum()) / self.selected.size


class Condition:
    """A condition image and its selected region.

    Args:
        image: PIL image or path; RGBA with the object cut out (an RGB image needs ``remove_background``).
        mask: ``None`` (the whole object), a mask image or array of the image's size (non-zero = selected).
        min_coverage: a patch is selected when more than this share of its pixels is (0: any pixel).
        remove_background: optional ``f(RGB) -> RGBA`` used for images without alpha.
        name: a label for views and summaries (default: the file name, or ``"image"``).
    """

    def __init__(self, image: ImageLike, mask=None, *, min_coverage: float = 0.0,
                 remove_background: Optional[Callable] = None, name: Optional[str] = None):
        self.image = load_image(image)
        self.name = name or (Path(image).stem if isinstance(image, (str, Path)) else "image")
        self.mask = None if mask is None else _as_mask(mask, self.image.size)
        if self.mask is not None and not self.mask.any():
            raise ConditionError(f"{self.name}: the mask is empty (it selects no pixel)")
        if not 0.0 <= min_coverage <= 1.0:
            raise ConditionError(f"min_coverage must be in [0, 1], got {min_coverage}")
        self.min_coverage = float(min_coverage)
        self.remove_background = remove_background
        self._patches: Optional[np.ndarray] = None
        self._prepared: Optional[Prepared] = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_painted(cls, background: ImageLike, composite: ImageLike, threshold: float = 5.0, **kw) -> "Condition":
        """The region is where ``composite`` (the image with strokes painted over it) differs from
        ``background`` by more than ``threshold`` (Euclidean distance of the RGB(A) values)."""
        bg, comp = load_image(background), load_image(composite)
        if bg.size != comp.size:
            raise ConditionError(f"painted layer size {comp.size} does not match the image size {bg.size}")
        a = np.asarray(bg.convert("RGBA"), dtype=np.float32)
        b = np.asarray(comp.convert("RGBA"), dtype=np.float32)
        mask = np.linalg.norm(a - b, axis=-1) > threshold
        return cls(bg, mask, **kw)

    @classmethod
    def from_box(cls, image: ImageLike, box: Sequence[float], **kw) -> "Condition":
        """The region is the box ``(left, top, right, bottom)`` in image pixels (right/bottom exclusive)."""
        img = load_image(image)
        if len(box) != 4:
            raise ConditionError(f"a box is (left, top, right, bottom), got {box}")
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise ConditionError(f"empty box {tuple(box)}")
        mask = np.zeros((img.size[1], img.size[0]), bool)
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        return cls(img, mask, **kw)

    @classmethod
    def from_patches(cls, image: ImageLike, patches: Sequence[int], **kw) -> "Condition":
        """The region is given as patch indices ``37·i + j`` of the preprocessed image's grid."""
        cond = cls(image, None, **kw)
        idx = np.asarray(list(patches), dtype=np.int64)
        if idx.size == 0:
            raise ConditionError("patch list is empty")
        if idx.min() < 0 or idx.max() >= GRID * GRID:
            raise ConditionError(f"patch indices must be in [0, {GRID * GRID}), got {idx.min()}..{idx.max()}")
        grid = np.zeros(GRID * GRID, bool)
        grid[idx] = True
        cond._patches = grid.reshape(GRID, GRID)
        return cond

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> Prepared:
        """Preprocess once (cached on this object)."""
        if self._prepared is None:
            try:
                pre = preprocess_image(self.image, self.remove_background)
            except PreprocessError as e:
                raise ConditionError(f"{self.name}: {e}") from None
            fg = foreground_patches(np.asarray(pre.image), PATCH)
            pixel_mask = None
            if self._patches is not None:
                user = self._patches
            elif self.mask is not None:
                pixel_mask = pre.transform_mask(self.mask)
                if not pixel_mask.any():
                    raise ConditionError(f"{self.name}: the mask lies outside the cropped object")
                user = patch_grid_mask(pixel_mask, PATCH, self.min_coverage)
            else:
                user = fg
            selected = user & fg
            if not selected.any():
                raise ConditionError(f"{self.name}: the mask selects no foreground patch")
            self._prepared = Prepared(pre, pixel_mask, fg, selected)
        return self._prepared

    @property
    def key(self) -> str:
        """Content hash of the image, the mask and the selection rule."""
        h = hashlib.sha256()
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        h.update(buf.getvalue())
        if self.mask is not None:
            h.update(np.packbits(self.mask).tobytes() + str(self.mask.shape).encode())
        if self._patches is not None:
            h.update(b"patches" + np.packbits(self._patches).tobytes())
        h.update(f"cov={self.min_coverage!r}".encode())
        return h.hexdigest()

    @property
    def selected_area(self) -> int:
        """Number of selected patches (used to pick the global image)."""
        return int(self.prepare().selected.sum())

    def __repr__(self) -> str:
        kind = "patches" if self._patches is not None else ("mask" if self.mask is not None else "whole object")
        return f"Condition({self.name!r}, {self.image.size[0]}×{self.image.size[1]} {self.image.mode}, region: {kind})"


def split_global(conditions: Sequence[Condition]) -> Tuple[Condition, list]:
    """Pick the global image as the condition with the largest selected area (paper §3.1).

    Ties go to the earliest condition. Returns ``(global, locals)`` with the locals in input order.
    """
    if not conditions:
        raise ConditionError("no condition images given")
    areas = [c.selected_area for c in conditions]
    g = int(np.argmax(areas))
    return conditions[g], [c for i, c in enumerate(conditions) if i != g]

"""Condition images with their user-selected 2D regions.

A :class:`Condition` is an image plus a mask saying which part of it should steer the 3D asset. The
mask can be a mask image or array (:func:`read_mask` says how it is read), a layer painted over the
image (:meth:`Condition.from_painted`, :meth:`Condition.from_layer`), a box
(:meth:`Condition.from_box`) or patch indices of the 37×37 grid (:meth:`Condition.from_patches`).
Preparation runs TRELLIS's crop and resize once and moves the mask through the same transform by
coverage; a patch is selected when any of its pixels is.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .method.fusion import foreground_patches, patch_grid_mask
from .trellis.preprocess import (Preprocessed, PreprocessError, preprocess_image, rembg_remover,
                                 upscale_factor)

ImageLike = Union[str, Path, Image.Image]
PATCH = 14
SIZE = 518
GRID = SIZE // PATCH
MASK_FRAMES = ("image", "preprocessed")
KEY_RULES = "mask-v2:luminance-or-real-alpha;crop-by-coverage"  # bump when selection rules change
PAINT_THRESHOLD = 5.0


class ConditionError(ValueError):
    """A condition image or its mask cannot be used."""


class UpscaleWarning(UserWarning):
    """The object's crop is smaller than the encoder's 518 px, so it is upscaled (blurred detail)."""


# ---------------------------------------------------------------------------------------------- reading
def open_image(path: Union[str, Path], what: str = "image") -> Image.Image:
    """An image file as a viewer shows it: EXIF orientation applied, the first frame of an animation
    (with a warning). Raises :class:`ConditionError` naming the file when it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as f:
            frames = getattr(f, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{path.name} is animated ({frames} frames): fuse3d uses its first frame",
                              UserWarning, stacklevel=3)
                f.seek(0)
            fmt = f.format
            img = ImageOps.exif_transpose(f)
            img = img.copy() if img is f else img
            img.load()
            img.format = fmt  # kept: a mask read from a lossy JPEG is thresholded at half (read_mask)
    except FileNotFoundError:
        raise ConditionError(f"cannot read {what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConditionError(f"cannot read {what} {path}: it is a folder") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConditionError(f"cannot read {what} {path}: {e}") from None
    return img


def load_image(image: ImageLike) -> Image.Image:
    """A condition image from a path (:func:`open_image`) or a PIL image (its pixels as they are).

    Modes are normalised: palette, grey and grey+alpha become RGBA; CMYK and other colour spaces
    become RGB; 16-bit grey becomes 8-bit. Float images are refused.
    """
    img = image if isinstance(image, Image.Image) else open_image(image)
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ConditionError(f"a {mode} image with values outside 0..65535 cannot be read as 16-bit grey")
        img = Image.fromarray((arr >> 8).astype(np.uint8), "L")
    elif mode == "F":
        raise ConditionError("a floating-point (mode F) image is ambiguous; save it as 8-bit RGBA")
    if img.mode in ("P", "PA", "LA", "L", "1", "La") or (img.mode == "RGB" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBa …
    return img


def _opaque_value(dtype) -> object:
    if dtype == bool:
        return True
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).max
    return 1.0


def _from_channels(arr: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` → bool: alpha > 0 where the last channel of LA/RGBA is a real alpha, else
    any non-zero colour channel."""
    c = arr.shape[-1]
    if c in (2, 4):
        alpha = arr[..., -1]
        if not np.all(alpha == _opaque_value(arr.dtype)):
            return alpha > 0
        arr = arr[..., :-1]
    elif c not in (1, 3):
        raise ConditionError(f"a mask has 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels, got {c}")
    return (arr != 0).any(axis=-1)


LOSSY_FORMATS = ("JPEG", "MPO")


def _from_pil(img: Image.Image) -> np.ndarray:
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    if getattr(img, "format", None) in LOSSY_FORMATS:  # compression noise is never exactly zero
        return np.asarray(img.convert("L")) >= 128
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        if not np.all(rgba[..., 3] == 255):
            return rgba[..., 3] > 0
        return rgba[..., :3].any(axis=-1)
    if img.mode in ("L", "I", "F") or img.mode.startswith("I;16"):
        return np.asarray(img) != 0
    return np.asarray(img.convert("RGB")).any(axis=-1)  # P, RGB, CMYK, YCbCr …


def read_mask(mask, size: Optional[Tuple[int, int]] = None, *, what: str = "mask") -> np.ndarray:
    """The one rule that turns a user's mask into selected pixels: ``[H, W]`` bool.

    A mask is selected where it is **non-zero in its luminance** (any colour channel above zero),
    whatever its file mode: ``1``, ``L``, ``P``, ``RGB``, CMYK, 16-bit grey, or a numpy/torch array
    (bool, integer or float; ``[H, W]`` or channels last). **Alpha counts only when it carries real
    transparency**: an ``LA``/``RGBA``/palette mask whose alpha is not opaque everywhere is selected
    where alpha > 0 (a painted layer on a transparent background); an opaque one is read by its
    luminance. Files are read as a viewer shows them (EXIF orientation, first frame); a lossy JPEG
    file, whose compression noise is never exactly zero, is selected where its luminance is at least
    half (128).

    Args:
        mask: a path, a PIL image, or an array.
        size: ``(width, height)`` the mask must have, when given.
    Raises:
        ConditionError: unreadable, wrongly shaped, of the wrong size, with NaN, or empty.
    """
    if isinstance(mask, (str, Path)):
        mask = open_image(mask, what)
    if isinstance(mask, Image.Image):
        arr = _from_pil(mask)
    else:
        if hasattr(mask, "detach"):  # a torch tensor
            mask = mask.detach().cpu().numpy()
        arr = np.asarray(mask)
        if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
            raise ConditionError(f"a {what} array must be bool or numeric, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ConditionError(f"the {what} holds NaN or infinite values")
        if arr.ndim == 3:
            arr = _from_channels(arr)
        elif arr.ndim == 2:
            arr = arr != 0
    if arr.ndim != 2:
        raise ConditionError(f"a {what} must be [H, W] or [H, W, C], got shape {arr.shape}")
    if size is not None and arr.shape != (size[1], size[0]):
        hint = (" (a mask drawn on the preprocessed 518×518 image: pass mask_frame='preprocessed')"
                if arr.shape == (SIZE, SIZE) else "")
        raise ConditionError(f"{what} size {arr.shape[1]}×{arr.shape[0]} does not match the image size "
                             f"{size[0]}×{size[1]}{hint}")
    if not arr.any():
        raise ConditionError(f"the {what} is empty (it selects no pixel)")
    return arr


def painted_mask(background: np.ndarray, composite: np.ndarray, threshold: float = PAINT_THRESHOLD) -> np.ndarray:
    """``[H, W]`` bool: where ``composite`` differs from ``background`` by more than ``threshold``
    (Euclidean distance of the pixel values, as the published demo compares them)."""
    a, b = np.asarray(background, np.float32), np.asarray(composite, np.float32)
    return np.linalg.norm(a - b, axis=-1) > threshold


# ---------------------------------------------------------------------------------------------- conditions
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


def _remover_name(remover) -> Optional[str]:
    if remover is None or isinstance(remover, str):
        return remover
    return f"{getattr(remover, '__module__', '')}.{getattr(remover, '__qualname__', type(remover).__name__)}"


class Condition:
    """A condition image and its selected region.

    Args:
        image: PIL image or path. RGBA with the object cut out; an image without alpha needs
            ``background`` or ``remove_background``. Files are read as a viewer shows them (EXIF
            orientation applied); a PIL image is used as its pixels are.
        mask: ``None`` (the whole object) or a mask image, file or array. It is selected where it is
            non-zero in its luminance; its alpha counts only when it carries real transparency
            (:func:`read_mask`). An empty mask is an error.
        mask_frame: ``"image"`` (default: the mask has the image's size) or ``"preprocessed"`` (a
            518×518 mask drawn on the preprocessed image, as in the published demo).
        min_coverage: a patch is selected when more than this share of its pixels is (0: any pixel).
        background: ``"black"`` for an image without alpha that lies on black, e.g. one that TRELLIS
            already preprocessed: alpha is its non-black pixels.
        remove_background: ``f(RGB) -> RGBA`` for images without alpha, or ``"rembg"`` (rembg's
            u2net from rembg's own cache, as TRELLIS does; ``pip install 'fuse3d[rembg]'``).
        name: a label for views and summaries (default: the file name, or ``"image"``).

    Preparation crops and resizes as TRELLIS does and moves the mask by coverage: every selected
    source pixel marks the output pixels it overlaps, so a thin stroke is never lost. A crop whose
    longer side is below 518 px is upscaled, and a ``UserWarning`` gives the factor.
    """

    def __init__(self, image: ImageLike, mask=None, *, mask_frame: str = "image", min_coverage: float = 0.0,
                 background: Optional[str] = None, remove_background: Union[None, str, Callable] = None,
                 name: Optional[str] = None):
        self.image = load_image(image)
        self.name = name or (Path(image).stem if isinstance(image, (str, Path)) else "image")
        if mask_frame not in MASK_FRAMES:
            raise ConditionError(f"mask_frame must be one of {MASK_FRAMES}, got {mask_frame!r}")
        if background is not None and background != "black":
            raise ConditionError(f"background must be 'black' or None, got {background!r}")
        if isinstance(remove_background, str) and remove_background != "rembg":
            raise ConditionError(f"remove_background must be a function or 'rembg', got {remove_background!r}")
        if not 0.0 <= min_coverage <= 1.0:
            raise ConditionError(f"min_coverage must be in [0, 1], got {min_coverage}")
        size = (SIZE, SIZE) if mask_frame == "preprocessed" else self.image.size
        try:
            self.mask = None if mask is None else read_mask(mask, size)
        except ConditionError as e:
            raise ConditionError(f"{self.name}: {e}") from None
        self.mask_frame = mask_frame
        self.min_coverage = float(min_coverage)
        self.background = background
        self.remove_background = remove_background
        self._patches: Optional[np.ndarray] = None
        self._prepared: Optional[Prepared] = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_painted(cls, image: ImageLike, composite: ImageLike, /, threshold: float = PAINT_THRESHOLD,
                     **kw) -> "Condition":
        """The region is where ``composite`` (the image with strokes painted over it) differs from
        ``image`` (the background it was painted on) by more than ``threshold`` (Euclidean distance
        of the pixel values, as the published demo compares them).

        The composite is either the image's size (compared as RGBA) or 518×518: painted on the
        *preprocessed* image, as the published Fuse3D demo lets users paint. Then the image is
        preprocessed first (with ``kw``'s ``background``/``remove_background``) and compared in that
        frame (RGB). ``kw`` are :class:`Condition`'s keywords.
        """
        bg, comp = load_image(image), load_image(composite)
        name = kw.pop("name", None) or (Path(image).stem if isinstance(image, (str, Path)) else None)
        if bg.size == comp.size:
            mask = painted_mask(np.asarray(bg.convert("RGBA")), np.asarray(comp.convert("RGBA")), threshold)
            return cls._with_mask(bg, mask, "image", name, "painted", kw)
        if comp.size == (SIZE, SIZE):
            probe = cls(bg, name=name, **{k: v for k, v in kw.items() if k != "mask_frame"})
            pre = probe._preprocess()
            mask = painted_mask(np.asarray(pre.image), np.asarray(comp.convert("RGB")), threshold)
            return cls._with_mask(bg, mask, "preprocessed", name, "painted", kw)
        raise ConditionError(f"painted composite size {comp.size[0]}×{comp.size[1]} matches neither the image "
                             f"size {bg.size[0]}×{bg.size[1]} nor the preprocessed frame {SIZE}×{SIZE}")

    @classmethod
    def from_layer(cls, image: ImageLike, layer: ImageLike, /, **kw) -> "Condition":
        """The region is where a painted RGBA ``layer`` has alpha > 0 (a pen layer over ``image``).

        The layer is either the image's size, or 518×518: painted over the *preprocessed* image (as
        in the published demo). A layer with no alpha, or an empty one, is an error.
        """
        img = load_image(image)
        lay = layer if isinstance(layer, Image.Image) else open_image(layer, "layer")
        name = kw.pop("name", None) or (Path(image).stem if isinstance(image, (str, Path)) else None)
        if lay.mode not in ("RGBA", "LA", "PA") and "transparency" not in lay.info:
            raise ConditionError(f"a painted layer needs an alpha channel (painted = alpha > 0), got mode {lay.mode}")
        mask = np.asarray(lay.convert("RGBA"))[..., 3] > 0
        if lay.size == img.size:
            frame = "image"
        elif lay.size == (SIZE, SIZE):
            frame = "preprocessed"
        else:
            raise ConditionError(f"layer size {lay.size[0]}×{lay.size[1]} matches neither the image size "
                                 f"{img.size[0]}×{img.size[1]} nor the preprocessed frame {SIZE}×{SIZE}")
        return cls._with_mask(img, mask, frame, name, "layer", kw)

    @classmethod
    def _with_mask(cls, image, mask, frame, name, what, kw) -> "Condition":
        if not mask.any():
            raise ConditionError(f"{name or 'image'}: the {what} region is empty (nothing is painted)")
        kw = {k: v for k, v in kw.items() if k != "mask_frame"}
        return cls(image, mask, mask_frame=frame, name=name, **kw)

    @classmethod
    def from_box(cls, image: ImageLike, box: Sequence[float], /, **kw) -> "Condition":
        """The region is the box ``(left, top, right, bottom)`` in image pixels (right/bottom exclusive)."""
        img = load_image(image)
        name = kw.pop("name", None) or (Path(image).stem if isinstance(image, (str, Path)) else None)
        try:
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        except (TypeError, ValueError):
            raise ConditionError(f"a box is four numbers (left, top, right, bottom), got {box!r}") from None
        if x1 <= x0 or y1 <= y0:
            raise ConditionError(f"empty box {tuple(box)}")
        mask = np.zeros((img.size[1], img.size[0]), bool)
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        if not mask.any():
            raise ConditionError(f"box {tuple(box)} lies outside the {img.size[0]}×{img.size[1]} image")
        return cls(img, mask, name=name, **kw)

    @classmethod
    def from_patches(cls, image: ImageLike, patches: Sequence[int], /, **kw) -> "Condition":
        """The region is given as patch indices ``37·i + j`` of the preprocessed image's grid."""
        cond = cls(image, None, **kw)
        try:
            idx = np.asarray(list(patches))
        except TypeError:
            raise ConditionError(f"patches must be a list of integers, got {patches!r}") from None
        if idx.size == 0:
            raise ConditionError("patch list is empty")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ConditionError(f"patches must be integers, got {idx.dtype}")
        if idx.min() < 0 or idx.max() >= GRID * GRID:
            raise ConditionError(f"patch indices must be in [0, {GRID * GRID}), got {idx.min()}..{idx.max()}")
        grid = np.zeros(GRID * GRID, bool)
        grid[idx] = True
        cond._patches = grid.reshape(GRID, GRID)
        return cond

    # ------------------------------------------------------------------ preparation
    def _preprocess(self) -> Preprocessed:
        remover = self.remove_background
        try:
            if remover == "rembg":
                remover = rembg_remover()
            return preprocess_image(self.image, remover, self.background)
        except PreprocessError as e:
            raise ConditionError(f"{self.name}: {e}") from None

    def prepare(self) -> Prepared:
        """Preprocess once (cached on this object)."""
        if self._prepared is None:
            pre = self._preprocess()
            factor = upscale_factor(pre)
            if factor > 1:
                warnings.warn(f"{self.name}: the object's crop is {pre.crop_size} px, below the encoder's {SIZE} px; "
                              f"it is upscaled ×{factor:.2f}, so the encoder sees blurred detail", UpscaleWarning,
                              stacklevel=2)
            fg = foreground_patches(np.asarray(pre.image), PATCH)
            pixel_mask = None
            if self._patches is not None:
                user = self._patches
            elif self.mask is not None:
                pixel_mask = self.mask if self.mask_frame == "preprocessed" else pre.transform_mask(self.mask)
                if not pixel_mask.any():
                    raise ConditionError(f"{self.name}: the mask lies outside the cropped object (crop box "
                                         f"{pre.pixel_box} in image pixels)")
                user = patch_grid_mask(pixel_mask, PATCH, self.min_coverage)
            else:
                user = fg
            selected = user & fg
            if not selected.any():
                raise ConditionError(f"{self.name}: the mask selects no foreground patch (it covers only the "
                                     "background around the object)")
            self._prepared = Prepared(pre, pixel_mask, fg, selected)
        return self._prepared

    @property
    def key(self) -> str:
        """Content hash of the image, the mask, its frame, the background rule and the selection rule."""
        h = hashlib.sha256()
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        h.update(buf.getvalue())
        if self.mask is not None:
            h.update(np.packbits(self.mask).tobytes() + str(self.mask.shape).encode())
        if self._patches is not None:
            h.update(b"patches" + np.packbits(self._patches).tobytes())
        h.update(f"cov={self.min_coverage!r};frame={self.mask_frame};bg={self.background};"
                 f"remover={_remover_name(self.remove_background)};{KEY_RULES}".encode())
        return h.hexdigest()

    @property
    def selected_area(self) -> int:
        """Number of selected patches (used to pick the global image)."""
        return int(self.prepare().selected.sum())

    def _repr_html_(self) -> str:
        return condition_html(self)

    def __repr__(self) -> str:
        kind = "patches" if self._patches is not None else ("mask" if self.mask is not None else "whole object")
        if self.mask is not None and self.mask_frame == "preprocessed":
            kind += " (preprocessed frame)"
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


def png_data_uri(image: Union[Image.Image, np.ndarray], size: Optional[int] = None) -> str:
    """``image`` (PIL or ``uint8`` array; RGB, RGBA or L) as a ``data:image/png;base64,…`` URI, resized
    to ``size``² first if given: how notebooks, widgets and plotly's ``go.Image(source=…)`` embed
    pictures without sending every pixel as a number."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if size is not None:
        image = image.resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def condition_html(condition, size: int = 259) -> str:
    """A condition as a notebook shows it: the preprocessed crop the encoder sees, the patches outside
    the selection dimmed and the user's mask tinted, with the selected-patch count."""
    pr = condition.prepare()
    image = np.asarray(pr.image.convert("RGB"), np.float32)
    selected = np.kron(pr.selected, np.ones((PATCH, PATCH), bool))[..., None]
    shown = np.where(selected, image, 0.35 * image)
    if pr.pixel_mask is not None:
        tint = np.array([255.0, 140.0, 0.0])
        shown = np.where(pr.pixel_mask[..., None], 0.65 * shown + 0.35 * tint, shown)
    uri = png_data_uri(shown.round().astype(np.uint8), size)
    n, fg = int(pr.selected.sum()), int(pr.foreground.sum())
    return (f'<figure style="display:inline-block;margin:4px;text-align:center">'
            f'<img src="{uri}" width="{size}" alt="{html.escape(condition.name)}">'
            f"<figcaption><b>{html.escape(condition.name)}</b>: {n} of {fg} object patches selected"
            f" ({n / pr.selected.size:.1%} of the 37×37 grid)<br><small>{html.escape(repr(condition))}</small>"
            f"</figcaption></figure>")

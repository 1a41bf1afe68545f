"""Paint a region in the notebook (:func:`paint`): the published Fuse3D demo's pen and eraser, on the
crop the condition encoder actually sees.

The widget (anywidget, no extension to install) shows a condition image *after* TRELLIS's crop and
resize (518×518) with its 37×37 patch grid, and offers a brush, an eraser, a box, a clear button and
a brush size; the count of selected patches updates as you paint. The painting comes back to Python
at the end of every stroke, and :meth:`RegionPainter.condition` turns it into a
:class:`fuse3d.Condition` with the mask in the preprocessed frame, so the selected patches are
exactly those the widget counted (any painted pixel of an object patch).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Optional

import anywidget
import numpy as np
import traitlets
from PIL import Image

from fuse3d import Condition
from fuse3d.conditions import png_data_uri

SIZE = 518
_STYLE = """
.fuse3d-painter-bar { display: flex; gap: 6px; align-items: center; margin-bottom: 4px; font-size: 13px; }
.fuse3d-painter-bar button { padding: 2px 10px; }
.fuse3d-painter-bar button.active { background: #ff8c00; color: white; }
.fuse3d-painter-stack { position: relative; width: 518px; height: 518px; }
.fuse3d-painter-stack canvas { position: absolute; left: 0; top: 0; }
.fuse3d-painter-paint { opacity: 0.55; }
.fuse3d-painter-cursor { cursor: crosshair; touch-action: none; }
"""


class RegionPainter(anywidget.AnyWidget):
    """A region painter over one condition image (see the module docstring); :func:`paint` makes one.

    Attributes (synced with the page):
        tool: ``"brush"``, ``"eraser"`` or ``"box"``; brush: the brush's diameter in crop pixels.
        mask: the painting as a PNG data URI (transparent where unpainted; ``""`` when empty).
        selected_patches: the count the widget shows.
    """

    _esm = Path(__file__).with_name("painter.js")
    _css = _STYLE
    image = traitlets.Unicode("").tag(sync=True)
    mask = traitlets.Unicode("").tag(sync=True)
    tool = traitlets.Unicode("brush").tag(sync=True)
    brush = traitlets.Int(24).tag(sync=True)
    selected_patches = traitlets.Int(0).tag(sync=True)

    def __init__(self, source: Condition, **kwargs):
        self.source = source
        super().__init__(image=png_data_uri(source.prepare().image.convert("RGB")), **kwargs)

    @traitlets.validate("tool")
    def _check_tool(self, proposal):
        if proposal["value"] not in ("brush", "eraser", "box"):
            raise traitlets.TraitError(f"tool must be 'brush', 'eraser' or 'box', got {proposal['value']!r}")
        return proposal["value"]

    def mask_array(self) -> np.ndarray:
        """``[518, 518]`` bool: the painted pixels of the crop."""
        if not self.mask:
            return np.zeros((SIZE, SIZE), bool)
        png = base64.b64decode(self.mask.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3] > 0

    def set_mask(self, mask: Optional[np.ndarray]) -> None:
        """Replace the painting with a ``[518, 518]`` bool mask in the crop's frame (``None`` clears it)."""
        if mask is None or not np.any(mask):
            self.mask = ""
            return
        mask = np.asarray(mask, bool)
        if mask.shape != (SIZE, SIZE):
            raise ValueError(f"the mask must be [{SIZE}, {SIZE}] (the crop), got {list(mask.shape)}")
        rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
        rgba[mask] = (255, 140, 0, 255)
        self.mask = png_data_uri(Image.fromarray(rgba, "RGBA"))

    def condition(self, name: Optional[str] = None) -> Condition:
        """The painted region as a :class:`fuse3d.Condition` (mask in the preprocessed frame)."""
        mask = self.mask_array()
        if not mask.any():
            raise ValueError("nothing is painted yet: paint a region (or call set_mask) first")
        src = self.source
        return Condition(src.image, mask, mask_frame="preprocessed", min_coverage=src.min_coverage,
                         background=src.background, remove_background=src.remove_background,
                         name=name or f"{src.name} (painted)")


def paint(image, *, brush: int = 24, **condition_kwargs) -> RegionPainter:
    """A region painter over ``image`` (anything :class:`fuse3d.Condition` takes, or a Condition,
    whose own mask is shown as the starting painting); ``painter.condition()`` is the result."""
    source = image if isinstance(image, Condition) else Condition(image, **condition_kwargs)
    start = source.prepare().pixel_mask
    bare = Condition(source.image, min_coverage=source.min_coverage, background=source.background,
                     remove_background=source.remove_background, name=source.name)
    painter = RegionPainter(bare, brush=brush)
    if start is not None:
        painter.set_mask(start)
    return painter

"""Shared look of every view: model labels, colours, 3D scene layout, HTML export.

Every figure says which model produced it (and, for fuse3d's own models, what they are: the tiny one
has random weights, the small one only knows procedural objects); 3D scenes use TRELLIS's frame
(z up, object in ``[-0.5, 0.5]``³) with equal axis scales; HTML files embed plotly.js (no CDN) and
use deterministic element ids.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import plotly.graph_objects as go

#: Score colour scale of every attention view.
SCORE_SCALE = "Viridis"
#: Colour of voxels/patches outside every region.
NEUTRAL = "#d4d4d4"
#: One colour per local condition (k = 0, 1, …), then repeating.
LOCAL_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#8c564b")
#: Colour of cells aligned with several local conditions at once.
OVERLAP = "#000000"
#: Classes of a raw → refined mask comparison.
CHANGE_COLORS = {"outside": NEUTRAL, "kept": "#4c78a8", "added": "#2ca02c", "removed": "#d62728"}
#: A highlighted (chosen) item: head titles, D_g patches.
HIGHLIGHT = "#d62728"

LIGHTING = dict(ambient=0.75, diffuse=0.45, specular=0.02, roughness=0.9, fresnel=0.02)
LIGHT_POSITION = dict(x=1000, y=600, z=2000)


def local_color(k: int) -> str:
    return LOCAL_COLORS[k % len(LOCAL_COLORS)]


def is_random_model(source) -> bool:
    """Whether a run or pipeline uses random weights (the bundled tiny model): outputs mean nothing."""
    from fuse3d.tiny_model import TINY_MODEL_NAME

    trellis = source.trellis
    return trellis.model_name == TINY_MODEL_NAME or "meaningless" in getattr(trellis, "description", "").lower()


def is_small_model(source) -> bool:
    """Whether a run or pipeline uses fuse3d's small model trained on procedural objects."""
    from fuse3d.bundled import SMALL_MODEL_NAME

    return source.trellis.model_name == SMALL_MODEL_NAME


def is_toy_model(source) -> bool:
    """Whether a run or pipeline uses one of fuse3d's own models (the random-weight tiny model or
    the small trained one): their structures sampled from an image are too rough to study alignment on."""
    return is_random_model(source) or is_small_model(source)


def model_label(source) -> str:
    """``"model: NAME"``, plus what a bundled model is (``source``: a Run or a Fuse3D)."""
    label = f"model: {source.trellis.model_name}"
    if is_random_model(source):
        return label + " (random weights: outputs are meaningless)"
    if is_small_model(source):
        return label + " (small model trained on procedural objects: rough, see docs/evaluation.md)"
    return label


def defaults_label(run) -> str:
    """Which alignment defaults apply to a run's model and where they came from."""
    d = run.fuse3d.defaults
    whose = "the model's own" if d.from_model else "the paper's"
    return f"{whose} defaults: heads {list(d.heads)} @ {d.threshold:g} ({d.source})"


def title(text: str, source=None) -> dict:
    """A figure title with the model line under it."""
    sub = f"<br><sup>{model_label(source)}</sup>" if source is not None else ""
    return dict(text=f"{text}{sub}", x=0.01, xanchor="left", font=dict(size=16))


def camera(yaw_deg: float = 45.0, pitch_deg: float = 25.0, distance: float = 2.0) -> dict:
    """A plotly scene camera looking at the centre from azimuth ``yaw`` (from +x towards +y) and
    elevation ``pitch``, z up (the angles of :class:`fuse3d.data.View`)."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    eye = dict(x=distance * math.cos(p) * math.cos(y), y=distance * math.cos(p) * math.sin(y), z=distance * math.sin(p))
    return dict(eye=eye, up=dict(x=0, y=0, z=1), center=dict(x=0, y=0, z=0))


def scene(yaw_deg: float = 45.0, pitch_deg: float = 25.0, axes: bool = False) -> dict:
    """Scene layout: equal scales (``aspectmode="data"``), z up, axes hidden unless ``axes``."""
    axis = dict(visible=axes, showbackground=False, title="")
    return dict(aspectmode="data", xaxis=axis, yaxis=axis, zaxis=dict(axis),
                camera=camera(yaw_deg, pitch_deg), dragmode="turntable")


def tile_scene(rows: int, cols: int, gap: float = 0.35) -> dict:
    """The scene of :func:`viz.voxels.tile_placement`'s small multiples: seen orthographically from −y,
    z up, so every tile shows its turned object the same way."""
    axis = dict(visible=False, showbackground=False, title="")
    return dict(aspectmode="data", xaxis=axis, yaxis=axis, zaxis=dict(axis), dragmode="pan",
                camera=dict(eye=dict(x=0, y=-2.0, z=0), up=dict(x=0, y=0, z=1), center=dict(x=0, y=0, z=0),
                            projection=dict(type="orthographic")))


def element_id(fig: go.Figure, name: Optional[str] = None) -> str:
    """A deterministic HTML id: ``name`` or a hash of the figure's JSON."""
    if name:
        return name
    return "fuse3d-" + hashlib.sha256(fig.to_json().encode()).hexdigest()[:12]


def write_html(fig: go.Figure, path: Union[str, Path], div_id: Optional[str] = None,
               post_script: Optional[str] = None) -> Path:
    """Write a standalone HTML file with plotly.js embedded (works offline; no CDN)."""
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True, div_id=element_id(fig, div_id),
                   post_script=post_script, config={"displaylogo": False})
    return path


def save(fig: go.Figure, path: Union[str, Path], size: Optional[Tuple[int, int]] = None) -> Path:
    """Save a figure without any network: ``.html`` is a standalone page with plotly.js embedded
    (:func:`write_html`), ``.png`` is drawn by headless Chromium (:func:`viz.browser.figure_screenshot`;
    needs the ``chromium`` binary) at the figure's own size unless ``size`` is given."""
    path = Path(path)
    if path.suffix == ".html":
        return write_html(fig, path)
    if path.suffix == ".png":
        from .browser import figure_screenshot

        return figure_screenshot(fig, path, size)
    raise ValueError(f"save writes .html or .png, not {path.suffix or 'no suffix'!r}")


def legend_entry(name: str, color: str, group: Optional[str] = None) -> go.Scatter3d:
    """An invisible 3D trace that only shows ``name`` in the legend with a colour square."""
    return go.Scatter3d(x=[None], y=[None], z=[None], mode="markers", name=name, legendgroup=group or name,
                        marker=dict(size=10, color=color, symbol="square"), showlegend=True, hoverinfo="skip")


def subplot_specs(rows: int, cols: int, kind: str = "scene") -> Sequence[Sequence[dict]]:
    return [[{"type": kind} for _ in range(cols)] for _ in range(rows)]

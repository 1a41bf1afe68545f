"""Voxel views: the exposed faces of a voxel set as one mesh, coloured per voxel.

Data preparation (:func:`exposed_faces`) is separate from plotting (:func:`voxel_mesh`,
:func:`voxel_figure`, :func:`voxel_scatter`). Voxels are integer coordinates ``(x, y, z)`` (or
``(batch, x, y, z)`` rows as fuse3d returns them) on a ``resolution``³ grid: 64 for the structure's
voxels, 32 for the latent flow's cells. Voxel ``(i, j, k)`` covers ``[i, i+1) / resolution - 0.5``
etc. in TRELLIS's frame, so voxels, cells, meshes and Gaussians overlay exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
import plotly.graph_objects as go

from . import style

if TYPE_CHECKING:
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]

# (axis, sign) of the 6 face directions
_DIRECTIONS = [(a, s) for a in range(3) for s in (1, -1)]
# corner offsets of a face in its own (u, v) plane, counter-clockwise seen along +axis
_QUAD_UV = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])


def as_xyz(coords: ArrayLike) -> np.ndarray:
    """``[N, 3]`` int64 ``(x, y, z)`` from ``[N, 3]`` or ``[N, 4]`` ``(batch, x, y, z)`` rows."""
    c = np.asarray(coords.cpu() if hasattr(coords, "cpu") else coords)
    if c.ndim != 2 or c.shape[1] not in (3, 4):
        raise ValueError(f"voxel coords must be [N, 3] or [N, 4], got shape {c.shape}")
    return c[:, -3:].astype(np.int64)


def _keys(xyz: np.ndarray, size: int) -> np.ndarray:
    return (xyz[:, 0] * size + xyz[:, 1]) * size + xyz[:, 2]


@dataclass
class VoxelSurface:
    """The faces of a voxel set that are not shared by two of its voxels.

    Attributes:
        vertices: ``[V, 3]`` int64 grid corners (each corner once).
        quads: ``[F, 4]`` vertex indices of each exposed face, counter-clockwise seen from outside.
        face_voxel: ``[F]`` row (in the input coords) of the voxel each face belongs to.
    """

    vertices: np.ndarray
    quads: np.ndarray
    face_voxel: np.ndarray

    @property
    def triangles(self) -> np.ndarray:
        """``[2F, 3]``: each quad ``(a, b, c, d)`` as ``(a, b, c)`` and ``(a, c, d)``."""
        q = self.quads
        return np.stack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]], axis=1).reshape(-1, 3)

    @property
    def triangle_voxel(self) -> np.ndarray:
        """``[2F]`` voxel row of each triangle."""
        return np.repeat(self.face_voxel, 2)

    def positions(self, resolution: int) -> np.ndarray:
        """``[V, 3]`` float32 vertex positions in TRELLIS's frame."""
        return (self.vertices / resolution - 0.5).astype(np.float32)


def exposed_faces(coords: ArrayLike) -> VoxelSurface:
    """The exposed faces of unit voxels: a face between two occupied voxels is left out and
    corners shared by several faces are merged.

    Args:
        coords: ``[N, 3]`` or ``[N, 4]`` integer voxel coordinates (duplicates are not allowed).

    Returns:
        A :class:`VoxelSurface`: a single voxel has 6 faces, two adjacent voxels 10, a 2×2×2 block 24.
    """
    xyz = as_xyz(coords)
    if len(xyz) == 0:
        return VoxelSurface(np.zeros((0, 3), np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.int64))
    if xyz.min() < 0:
        raise ValueError("voxel coords must be non-negative")
    size = int(xyz.max()) + 3  # room for the neighbours at -1 and max+1 (shifted by one)
    occupied = np.sort(_keys(xyz + 1, size))
    if len(np.unique(occupied)) != len(occupied):
        raise ValueError("voxel coords contain duplicates")
    corners, owners = [], []
    for axis, sign in _DIRECTIONS:
        step = np.zeros(3, np.int64)
        step[axis] = sign
        neighbour = _keys(xyz + 1 + step, size)
        pos = np.searchsorted(occupied, neighbour).clip(max=len(occupied) - 1)
        exposed = np.flatnonzero(occupied[pos] != neighbour)
        u, v = (axis + 1) % 3, (axis + 2) % 3
        quad = np.zeros((4, 3), np.int64)
        quad[:, axis] = 1 if sign > 0 else 0
        quad[:, u], quad[:, v] = _QUAD_UV[:, 0], _QUAD_UV[:, 1]
        if sign < 0:
            quad = quad[::-1]
        corners.append(xyz[exposed][:, None, :] + quad[None])
        owners.append(exposed)
    corners = np.concatenate(corners)  # [F, 4, 3]
    face_voxel = np.concatenate(owners)
    order = np.argsort(face_voxel, kind="stable")  # faces grouped by voxel
    corners, face_voxel = corners[order], face_voxel[order]
    flat = corners.reshape(-1, 3)
    unique_keys, inverse = np.unique(_keys(flat, size), return_inverse=True)
    vertices = np.zeros((len(unique_keys), 3), np.int64)
    vertices[inverse] = flat
    return VoxelSurface(vertices, inverse.reshape(-1, 4).astype(np.int64), face_voxel.astype(np.int64))


def rgb_strings(colors: ArrayLike) -> np.ndarray:
    """``[N, 3]`` RGB in ``[0, 1]`` (or 0–255 ints) → ``[N]`` ``"#rrggbb"`` strings."""
    c = np.asarray(colors)
    if c.ndim != 2 or c.shape[1] < 3:
        raise ValueError(f"colours must be [N, 3], got shape {c.shape}")
    c = c[:, :3]
    c = np.round(np.clip(c, 0, 1) * 255) if np.issubdtype(c.dtype, np.floating) else np.clip(c, 0, 255)
    c = c.astype(np.int64)
    return np.array([f"#{r:02x}{g:02x}{b:02x}" for r, g, b in c])


def voxel_mesh(surface: VoxelSurface, *, values: Optional[ArrayLike] = None, colors: Optional[ArrayLike] = None,
               faces: Optional[np.ndarray] = None, resolution: int = 64, name: str = "voxels",
               colorscale: str = style.SCORE_SCALE, cmin: Optional[float] = None, cmax: Optional[float] = None,
               colorbar: Optional[dict] = None, opacity: float = 1.0, hover: str = "value",
               placement: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> go.Mesh3d:
    """A flat-shaded ``Mesh3d`` of a voxel surface, coloured per voxel.

    Args:
        surface: from :func:`exposed_faces`.
        values: ``[N]`` per-voxel scalars mapped through ``colorscale`` (``cmin``/``cmax``; a colour
            bar when ``colorbar`` is given).
        colors: ``[N, 3]`` RGB per voxel, ``[N]`` colour strings, or one colour string for all
            (instead of ``values``).
        faces: ``[F]`` bool/indices selecting which faces to draw (default: all).
        resolution: grid size of the voxels (64 voxels, 32 cells).
        placement: maps the ``[V, 3]`` vertex positions (TRELLIS frame) to where they are drawn (a
            tile of :func:`tile_placement`).
    """
    sel = np.arange(len(surface.quads)) if faces is None else np.asarray(faces)
    if sel.dtype == bool:
        sel = np.flatnonzero(sel)
    sub = VoxelSurface(surface.vertices, surface.quads[sel], surface.face_voxel[sel])
    pos, tri, owner = surface.positions(resolution), sub.triangles, sub.triangle_voxel
    if placement is not None:
        pos = placement(pos)
    trace = dict(x=pos[:, 0], y=pos[:, 1], z=pos[:, 2], i=tri[:, 0], j=tri[:, 1], k=tri[:, 2], name=name,
                 flatshading=True, lighting=style.LIGHTING, lightposition=style.LIGHT_POSITION, opacity=opacity)
    if values is not None:
        v = np.asarray(values, dtype=np.float32)
        trace.update(intensity=v[owner], intensitymode="cell", colorscale=colorscale, cmin=cmin, cmax=cmax,
                     showscale=colorbar is not None, colorbar=colorbar,
                     hovertemplate=f"{hover} %{{intensity:.3f}}<extra>{name}</extra>")
    elif colors is None or isinstance(colors, str):
        trace.update(color=colors or style.NEUTRAL, hovertemplate=f"<extra>{name}</extra>")
    else:
        c = np.asarray(colors)
        strings = c if c.ndim == 1 else rgb_strings(c)
        trace.update(facecolor=strings[owner], hovertemplate=f"<extra>{name}</extra>")
    return go.Mesh3d(**trace)


def tile_placement(index: int, cols: int, camera: tuple = (45.0, 25.0), gap: float = 0.35
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """Small multiples in one scene (one WebGL context, however many tiles): positions in TRELLIS's
    frame turned so that a camera at ``camera = (yaw, pitch)`` (as :func:`style.camera`) looks along
    +y, then moved to tile ``index`` of a ``cols``-wide grid in the x–z plane (rows go down). Seen
    by :func:`style.tile_scene`'s camera (orthographic, from −y), every tile shows the same view."""
    yaw, pitch = np.radians(camera[0]), np.radians(camera[1])
    a = -yaw - np.pi / 2  # the camera's azimuth to −y
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    turn = (rx @ rz).T
    shift = np.array([(index % cols) * (1 + gap), 0.0, -(index // cols) * (1 + gap)])
    return lambda pos: (pos @ turn + shift).astype(np.float32)


def small_multiples(tiles: "dict[str, Callable[[Callable[[np.ndarray], np.ndarray]], go.Mesh3d]]", cols: int,
                    camera: tuple = (45.0, 25.0), highlight: Sequence[str] = ()) -> "tuple[go.Figure, int]":
    """Tiles in **one** 3D scene, whatever their number (a browser page keeps only about 16 WebGL
    contexts; a scene per tile would use them up). ``tiles`` maps each tile's label to a function
    that draws it at a given :func:`tile_placement`. Labels in ``highlight`` are drawn bold, starred
    and red. Returns the figure (title and size left to the caller) and its number of rows."""
    if not tiles:
        raise ValueError("small_multiples needs at least one tile")
    cols = max(1, min(int(cols), len(tiles)))
    rows = -(-len(tiles) // cols)
    fig, labels = go.Figure(), []
    for n, (label, draw) in enumerate(tiles.items()):
        place = tile_placement(n, cols, camera)
        fig.add_trace(draw(place))
        x, _, z = place(np.zeros((1, 3)))[0]
        marked = label in highlight
        labels.append(dict(x=float(x), y=0.0, z=float(z) + 0.62, showarrow=False,
                           text=f"<b>{label} ★</b>" if marked else label,
                           font=dict(color=style.HIGHLIGHT if marked else "#444", size=13)))
    fig.update_layout(scene=dict(style.tile_scene(rows, cols), annotations=labels), showlegend=False)
    return fig, rows


def voxel_figure(coords: ArrayLike, *, values: Optional[ArrayLike] = None, colors: Optional[ArrayLike] = None,
                 resolution: int = 64, title: str = "voxels", source=None, colorbar_title: str = "value",
                 cmin: Optional[float] = None, cmax: Optional[float] = None, height: int = 520) -> go.Figure:
    """One scene with the exposed faces of ``coords`` coloured by ``values`` or ``colors``.

    ``source`` (a Run or Fuse3D) puts the model's name under the title.
    """
    bar = dict(title=colorbar_title, len=0.7) if values is not None else None
    mesh = voxel_mesh(exposed_faces(coords), values=values, colors=colors, resolution=resolution, cmin=cmin,
                      cmax=cmax, colorbar=bar, hover=colorbar_title)
    fig = go.Figure(mesh)
    fig.update_layout(title=style.title(title, source), scene=style.scene(), height=height,
                      margin=dict(l=0, r=0, t=70, b=0))
    return fig


def voxel_scatter(coords: ArrayLike, *, values: Optional[ArrayLike] = None, colors: Optional[ArrayLike] = None,
                  resolution: int = 64, name: str = "voxels", size: float = 2.5) -> go.Scatter3d:
    """A quick look: one marker per voxel centre."""
    xyz = (as_xyz(coords) + 0.5) / resolution - 0.5
    marker = dict(size=size)
    if values is not None:
        marker.update(color=np.asarray(values, dtype=np.float32), colorscale=style.SCORE_SCALE)
    elif colors is not None:
        c = np.asarray(colors)
        marker.update(color=c if c.ndim == 1 else rgb_strings(c))
    else:
        marker.update(color=style.NEUTRAL)
    return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", marker=marker, name=name)

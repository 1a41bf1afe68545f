"""Views of the generated asset: its colours on the structure's voxels, its 3D Gaussians, its mesh,
and several runs side by side (ablations).

The Gaussian decoder makes ``G`` Gaussians per voxel, voxel-major, so the asset's colour on a voxel
is the opacity-weighted mean colour of that voxel's Gaussians: a compact view whose geometry is the
structure's and whose colours change with the run (λ sweeps, ablations) without new geometry.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import plotly.graph_objects as go

from . import style
from .voxels import exposed_faces, rgb_strings, small_multiples, voxel_mesh


def voxel_colors(gaussians, num_voxels: int) -> np.ndarray:
    """``[N, 3]``: opacity-weighted mean RGB of each voxel's Gaussians (:meth:`fuse3d.assets.Gaussians.voxel_colors`,
    the colours the evaluation scores)."""
    return gaussians.voxel_colors(num_voxels)


def asset_colors(run) -> np.ndarray:
    """``[N, 3]`` asset colour per structure voxel (decodes the run's Gaussians once; cached)."""
    return voxel_colors(run.gaussians, len(run.structure))


def asset_figure(run, title: str = "Generated asset (Gaussian colours on the structure)",
                 camera: tuple = (45.0, 25.0)) -> go.Figure:
    """The asset's colours on the structure's voxels."""
    fig = go.Figure(voxel_mesh(exposed_faces(run.structure), colors=asset_colors(run), name="asset"))
    fig.update_layout(title=style.title(title, run), scene=style.scene(*camera), height=520,
                      margin=dict(l=0, r=0, t=70, b=0))
    return fig


def gaussians_figure(gaussians, source=None, max_points: int = 60000, seed: int = 0,
                     camera: tuple = (45.0, 25.0)) -> go.Figure:
    """3D Gaussians as coloured points (a random subset of at most ``max_points``, by ``seed``)."""
    n = len(gaussians)
    idx = np.arange(n) if n <= max_points else np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    p = gaussians.positions[idx]
    trace = go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", name="Gaussians", hoverinfo="skip",
                         marker=dict(size=1.6, color=rgb_strings(gaussians.rgb[idx])))
    fig = go.Figure(trace)
    fig.update_layout(title=style.title(f"3D Gaussians ({len(idx)} of {n} shown)", source), scene=style.scene(*camera),
                      height=520, margin=dict(l=0, r=0, t=70, b=0))
    return fig


def cluster_vertices(vertices: np.ndarray, faces: np.ndarray, cell: float) -> tuple:
    """Vertex clustering: merge vertices within the same ``cell``-sized grid box, drop collapsed and
    duplicate faces. Returns ``(vertex_group [V], new_faces [F', 3])``; group ``g``'s position or
    colour is the mean of its members."""
    keys = np.floor(np.asarray(vertices) / cell).astype(np.int64)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    f = group.reshape(-1)[faces]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[keep]
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    return group.reshape(-1), f[np.sort(first)]


def _group_mean(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    n = group.max() + 1
    out = np.zeros((n, values.shape[1]))
    np.add.at(out, group, values)
    return out / np.bincount(group, minlength=n)[:, None]


def vertex_colors(mesh) -> Optional[np.ndarray]:
    """``[V, 3]`` RGB in ``[0, 1]`` of a :class:`fuse3d.assets.Mesh` or a vertex-coloured trimesh, else ``None``."""
    colors = getattr(mesh, "vertex_colors", None)
    visual = getattr(mesh, "visual", None)
    if colors is None and visual is not None and visual.kind == "vertex":
        colors = visual.vertex_colors
    if colors is None:
        return None
    c = np.asarray(colors, np.float64)[:, :3]
    return c / 255.0 if np.issubdtype(np.asarray(colors).dtype, np.integer) else c


def mesh_figure(mesh, source=None, max_faces: int = 80000, camera: tuple = (45.0, 25.0)) -> go.Figure:
    """A vertex-coloured mesh (:class:`fuse3d.assets.Mesh` or trimesh), simplified by vertex
    clustering to about ``max_faces`` faces so the browser stays responsive."""
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    colors = original = vertex_colors(mesh)
    cell = float(np.ptp(v, axis=0).max()) / 1024
    while len(f) > max_faces:
        cell *= 1.5
        group, f = cluster_vertices(np.asarray(mesh.vertices), np.asarray(mesh.faces), cell)
        v = _group_mean(np.asarray(mesh.vertices, np.float64), group)
        colors = None if original is None else _group_mean(original, group)
    trace = dict(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], name="mesh",
                 lighting=style.LIGHTING, lightposition=style.LIGHT_POSITION, hoverinfo="skip")
    if colors is not None:
        trace["vertexcolor"] = rgb_strings(colors)
    else:
        trace["color"] = style.NEUTRAL
    fig = go.Figure(go.Mesh3d(**trace))
    fig.update_layout(title=style.title(f"Mesh ({len(f)} faces shown of {len(mesh.faces)})", source),
                      scene=style.scene(*camera), height=520, margin=dict(l=0, r=0, t=70, b=0))
    return fig


def compare_figure(runs: Dict[str, object], title: str = "Assets side by side", cols: int = 3,
                   camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Several runs' asset colours on their structures (e.g. ablations), ``cols`` tiles per row, all
    in one 3D scene (:func:`viz.voxels.small_multiples`)."""
    def tile(label, run):
        return lambda place: voxel_mesh(exposed_faces(run.structure), colors=asset_colors(run), name=label,
                                        placement=place)

    fig, rows = small_multiples({label: tile(label, run) for label, run in runs.items()}, cols, camera)
    fig.update_layout(title=style.title(title, next(iter(runs.values()))), height=300 * rows + 110, width=1000,
                      margin=dict(l=0, r=0, t=90, b=0))
    return fig


def color_change(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``[N]`` Euclidean distance between two ``[N, 3]`` RGB colourings (0 … √3)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        raise ValueError(f"colourings differ in shape: {reference.shape} vs {other.shape} (different structures?)")
    return np.linalg.norm(reference - other, axis=-1)


def change_figure(runs: Dict[str, object], title: str = "Where each variant changed the asset", cols: int = 3,
                  camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Per voxel, how far each run's asset colour moved from the first run's (same structure needed),
    one tile per other run, all in one 3D scene."""
    if len(runs) < 2:
        raise ValueError(f"change_figure compares runs with the first one: give at least two, got {len(runs)}")
    (ref_label, ref), *others = runs.items()
    base = asset_colors(ref)
    changes = {f"{label} vs {ref_label}": color_change(base, asset_colors(run)) for label, run in others}
    top = max(float(c.max()) for c in changes.values()) or 1.0
    surface = exposed_faces(ref.structure)

    def tile(n, label, change):
        bar = dict(title="ΔRGB", len=0.5) if n == 0 else None
        return lambda place: voxel_mesh(surface, values=change, name=label, cmin=0, cmax=top, colorbar=bar,
                                        hover="ΔRGB", placement=place)

    fig, rows = small_multiples({label: tile(n, label, c) for n, (label, c) in enumerate(changes.items())}, cols, camera)
    fig.update_layout(title=style.title(title, ref), height=300 * rows + 110, width=1000,
                      margin=dict(l=0, r=0, t=90, b=0))
    return fig

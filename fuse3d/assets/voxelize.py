"""Sparse structures from user geometry, and colour transfer onto user meshes.

A sparse structure is what TRELLIS's first stage produces and its second stage consumes: the active
voxels of a ``resolution``³ grid (64³ for the published models) as ``coords [N, 4]`` int32 rows
``(batch, x, y, z)`` with batch 0, unique and sorted by ``(x, y, z)``. Voxel ``(i, j, k)`` covers
``[i, i+1) / resolution - 0.5`` etc. in TRELLIS's frame (z up, ``[-0.5, 0.5]``³).
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from ._common import ArrayLike, as_numpy
from .export import Z_UP_TO_Y_UP
from .mesh import Mesh

__all__ = ["normalize_vertices", "voxelize_mesh", "voxels_from_grid", "voxels_from_points", "transfer_colors"]

MeshLike = Union[Mesh, trimesh.Trimesh, str, os.PathLike]

_SAMPLE_SPACING = 0.25  # surface samples at most this many voxels apart (< 0.5 keeps the shell closed)
_SAMPLES_PER_CHUNK = 1 << 22


def normalize_vertices(vertices: ArrayLike) -> Tuple[np.ndarray, np.ndarray, float]:
    """Centre the bounding box at the origin and scale its longest side to 1 (into ``[-0.5, 0.5]``³).

    Args:
        vertices: ``[V, 3]`` positions.

    Returns:
        ``(normalized [V, 3] float64, center [3], scale)`` with ``normalized = (vertices - center) * scale``.
    """
    v = as_numpy(vertices).astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"vertices must be a non-empty [V, 3] array, got shape {v.shape}")
    lo, hi = v.min(0), v.max(0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise ValueError("cannot normalize: all vertices are at one point")
    center = (lo + hi) / 2
    return (v - center) / extent, center, 1.0 / extent


def voxelize_mesh(mesh: MeshLike, resolution: int = 64, *, normalize: bool = True, from_y_up: bool = False) -> torch.Tensor:
    """The voxels a mesh's surface passes through, as a sparse structure.

    The surface is sampled on a barycentric lattice at most 1/4 voxel apart, so every point of it is
    within 1/4 voxel of a sample: the shell has no holes a row of voxels could pass through.

    Args:
        mesh: a :class:`Mesh`, a :class:`trimesh.Trimesh`, or a file trimesh can load (scenes are merged).
        resolution: voxels per side.
        normalize: fit the mesh into ``[-0.5, 0.5]``³ first (see :func:`normalize_vertices`); pass
            ``False`` for a mesh already in TRELLIS's frame (parts outside are clipped to the border voxels).
        from_y_up: the mesh is y up (as GLBs, including :func:`~fuse3d.assets.export_glb`'s, are);
            rotate it to TRELLIS's z up first.

    Returns:
        ``coords [N, 4]`` int32 ``(0, x, y, z)``, unique, sorted by ``(x, y, z)``.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    triangles, _ = framed_triangles(mesh, normalize, from_y_up, "voxelize")
    keys = np.unique(np.concatenate(list(_surface_voxel_keys(triangles, resolution))))
    return _coords_from_keys(keys, resolution)


def voxels_from_grid(grid: ArrayLike, resolution: Optional[int] = None) -> torch.Tensor:
    """A sparse structure from a dense occupancy grid.

    Args:
        grid: ``[R, R, R]`` bool, indexed ``grid[x, y, z]``.
        resolution: if given, the grid must be ``resolution`` voxels per side.

    Returns:
        ``coords [N, 4]`` int32 ``(0, x, y, z)`` of the ``True`` voxels, sorted by ``(x, y, z)``.
    """
    g = as_numpy(grid)
    if g.ndim != 3 or len(set(g.shape)) != 1:
        raise ValueError(f"grid must be a cubic [R, R, R] array, got shape {g.shape}")
    if resolution is not None and g.shape[0] != resolution:
        raise ValueError(f"grid must be [{resolution}, {resolution}, {resolution}], got shape {g.shape}")
    if g.dtype != np.bool_:
        raise ValueError(f"grid must be a bool array, got dtype {g.dtype} (use e.g. grid > 0)")
    if not g.any():
        raise ValueError("grid has no occupied voxel")
    xyz = np.argwhere(g)  # row-major order: sorted by (x, y, z)
    return _with_batch_column(xyz)


def voxels_from_points(points: ArrayLike, resolution: int = 64) -> torch.Tensor:
    """A sparse structure from integer voxel indices (duplicates allowed).

    Args:
        points: ``[N, 3]`` integer ``(x, y, z)`` in ``[0, resolution)``.
        resolution: voxels per side.

    Returns:
        ``coords [M, 4]`` int32 ``(0, x, y, z)``, unique, sorted by ``(x, y, z)``.
    """
    p = as_numpy(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [N, 3] voxel indices (x, y, z), got shape {p.shape}")
    if len(p) == 0:
        raise ValueError("points is empty: a sparse structure needs at least one voxel")
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"points must be integer voxel indices, got dtype {p.dtype} (round and cast them first)")
    if p.min() < 0 or p.max() >= resolution:
        raise ValueError(f"points must lie in [0, {resolution}), got values in [{p.min()}, {p.max()}]")
    keys = np.unique((p[:, 0].astype(np.int64) * resolution + p[:, 1]) * resolution + p[:, 2])
    return _coords_from_keys(keys, resolution)


def transfer_colors(target: Union[Mesh, trimesh.Trimesh, ArrayLike], source_points: ArrayLike,
                    source_colors: ArrayLike) -> np.ndarray:
    """Colour every target vertex with the colour of its nearest source point.

    Target and source must be in the same frame: to colour a user's mesh from generated Gaussians
    (``gaussians.positions``, ``gaussians.rgb``) or a generated :class:`Mesh`, bring the user's mesh
    into TRELLIS's frame with :func:`normalize_vertices` first, as :func:`voxelize_mesh` does.

    Args:
        target: a :class:`Mesh`, a :class:`trimesh.Trimesh` or ``[V, 3]`` vertex positions.
        source_points: ``[P, 3]`` positions.
        source_colors: ``[P, C]`` colours (e.g. RGB).

    Returns:
        ``[V, C]`` float32 colours.
    """
    if isinstance(target, (Mesh, trimesh.Trimesh)):
        vertices = np.asarray(target.vertices, dtype=np.float64)
    else:
        vertices = as_numpy(target).astype(np.float64)
    points = as_numpy(source_points).astype(np.float64)
    colors = as_numpy(source_colors).astype(np.float32)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"target vertices must be [V, 3], got shape {vertices.shape}")
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"source_points must be a non-empty [P, 3] array, got shape {points.shape}")
    if colors.ndim != 2 or len(colors) != len(points):
        raise ValueError(f"source_colors must be [P, C] with P = {len(points)}, got shape {colors.shape}")
    _, nearest = cKDTree(points).query(vertices, k=1)
    return colors[nearest]


# ---------------------------------------------------------------------------- helpers
def framed_triangles(mesh: MeshLike, normalize: bool, from_y_up: bool, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(triangles [F, 3, 3], faces [F, 3])`` of a mesh in TRELLIS's frame (rotated from y up, then
    normalised into the unit cube, as asked); ``what`` names the caller in the error for no faces."""
    vertices, faces = _vertices_faces(mesh)
    if len(faces) == 0:
        raise ValueError(f"cannot {what} a mesh without faces")
    if from_y_up:
        vertices = vertices @ Z_UP_TO_Y_UP.T
    if normalize:
        vertices = normalize_vertices(vertices)[0]
    return vertices[faces], faces


def _vertices_faces(mesh: MeshLike) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, (str, os.PathLike)):
        mesh = trimesh.load(mesh, force="mesh")
    if isinstance(mesh, (Mesh, trimesh.Trimesh)):
        return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    raise TypeError(f"expected a Mesh, a trimesh.Trimesh or a path, got {type(mesh).__name__}")


def _surface_voxel_keys(triangles: np.ndarray, resolution: int) -> Iterator[np.ndarray]:
    """Keys (``(x·R + y)·R + z``) of the voxels hit by lattice samples of every triangle."""
    for _, _, keys in _lattice_samples(triangles, resolution):
        yield np.unique(keys)


def _lattice_samples(triangles: np.ndarray, resolution: int) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Surface samples in chunks: ``(triangle index [M], barycentric weights [M, 3], voxel key [M])``.

    A triangle whose longest edge is ``L`` is split ``n = ceil(L / spacing)`` times along each edge;
    the lattice points ``(i/n, j/n)`` then form sub-triangles with edges at most ``spacing``.
    """
    spacing = _SAMPLE_SPACING / resolution
    edges = np.linalg.norm(triangles - np.roll(triangles, 1, axis=1), axis=-1).max(1)
    splits = np.maximum(1, np.ceil(edges / spacing)).astype(np.int64)
    for n in np.unique(splits):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        inside = i + j <= n
        weights = np.stack([i[inside], j[inside], n - i[inside] - j[inside]], axis=1) / n  # [K, 3]
        members = np.flatnonzero(splits == n)
        step = max(1, _SAMPLES_PER_CHUNK // len(weights))
        for start in range(0, len(members), step):
            faces = members[start:start + step]
            points = np.einsum("kv,fvd->fkd", weights, triangles[faces]).reshape(-1, 3)
            idx = np.clip(np.floor((points + 0.5) * resolution), 0, resolution - 1).astype(np.int64)
            keys = (idx[:, 0] * resolution + idx[:, 1]) * resolution + idx[:, 2]
            yield np.repeat(faces, len(weights)), np.tile(weights, (len(faces), 1)), keys


def _coords_from_keys(keys: np.ndarray, resolution: int) -> torch.Tensor:
    xyz = np.stack([keys // (resolution * resolution), (keys // resolution) % resolution, keys % resolution], axis=1)
    return _with_batch_column(xyz)


def _with_batch_column(xyz: np.ndarray) -> torch.Tensor:
    coords = np.concatenate([np.zeros((len(xyz), 1), dtype=np.int64), xyz.astype(np.int64)], axis=1)
    return torch.from_numpy(coords.astype(np.int32))

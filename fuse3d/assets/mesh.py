"""Triangle meshes from the SLAT mesh decoder, extracted on the CPU.

The published TRELLIS turns :class:`~fuse3d.trellis.vae.SLatMeshDecoder` output into a mesh with
FlexiCubes (a CUDA extension). This module builds the same signed distance field and extracts its
zero level set with scikit-image's marching cubes instead:

* every fine voxel (a cube of the ``R``³ grid, ``R = 4·resolution``) predicts one sdf value per
  corner; ``-1/R`` is added to each (the published ``sdf_bias``);
* a vertex of the ``(R+1)``³ vertex grid gets the mean of the corner values of the active cubes that
  share it; vertices that no active cube touches are ``+1`` (outside; the sdf is negative inside);
* grid vertex ``v`` sits at ``v / R - 0.5``, so the object lives in ``[-0.5, 0.5]``³ (z up);
* each mesh vertex takes the mean corner colour of its nearest grid vertex, clamped to ``[0, 1]``.

FlexiCubes' per-vertex ``deform`` offsets and per-cube ``weights`` only move vertices within a cube
and are ignored here, so surfaces are as smooth as plain marching cubes on an ``R``³ grid (not the
dual-contouring quality of FlexiCubes). The dense grid is built only over the bounding box of the
active vertices plus one vertex of ``+1`` on every side, which also closes surfaces that touch the
grid's border (FlexiCubes would leave those open).

Like the published extractor, this meshes the field over every cube. The active voxels form a
thin shell around the surface, so where the shell's negative inner side meets the untouched ``+1``
interior an inward-facing inner surface appears (the published pipeline later deletes faces that no
camera sees). ``fill_interior=True`` sets the untouched vertices that the shell encloses to ``-1``
instead, which removes that inner surface (and sealed cavities) while leaving the outer one as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from ..trellis.sparse import SparseTensor
from ._common import ArrayLike, as_numpy, decoder_fields

__all__ = ["Mesh", "extract_mesh", "CUBE_CORNERS"]


#: ``[8, 3]`` corner offsets ``(dx, dy, dz)`` of a cube, in the decoder's corner order (x fastest).
CUBE_CORNERS = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.int64
)


@dataclass(eq=False)
class Mesh:
    """A triangle mesh with optional per-vertex colours, in TRELLIS's frame (z up, ``[-0.5, 0.5]``³).

    Meshes from :func:`extract_mesh` are wound counter-clockwise seen from outside (normals point out).

    Attributes:
        vertices: ``[V, 3]`` float32 positions.
        faces: ``[F, 3]`` int64 vertex indices.
        vertex_colors: ``[V, 3]`` float32 RGB in ``[0, 1]``, or ``None`` for an uncoloured mesh.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Mesh vertices must be [V, 3], got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"Mesh faces must be [F, 3], got {self.faces.shape}")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError(f"Mesh faces index vertices outside [0, {len(self.vertices)})")
        if self.vertex_colors is not None:
            self.vertex_colors = np.ascontiguousarray(self.vertex_colors, dtype=np.float32)
            if self.vertex_colors.shape != self.vertices.shape:
                raise ValueError(
                    f"Mesh vertex_colors must be [V, 3] like the vertices {self.vertices.shape}, "
                    f"got {self.vertex_colors.shape}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, colored: bool = True) -> "Mesh":
        """A mesh with no vertices and no faces."""
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)) if colored else None)

    @classmethod
    def from_decoder_output(cls, decoder, out: SparseTensor, batch: int = 0, *, fill_interior: bool = False) -> "Mesh":
        """Extract the mesh of batch element ``batch`` from ``decoder.decode_features(slat)``.

        Args:
            decoder: a :class:`~fuse3d.trellis.vae.SLatMeshDecoder` (or anything with its
                ``feature_layout``, ``resolution`` and ``use_color``).
            out: its output: fine voxels ``coords [N, 4]`` in ``[0, 4·resolution)`` and raw features.
            batch: which batch element to mesh.
            fill_interior: treat enclosed untouched vertices as inside (see :func:`extract_mesh`).

        Returns:
            The mesh, coloured when the decoder has ``use_color``; empty if the sdf has no zero crossing.
        """
        names = ["sdf", "color"] if decoder.use_color else ["sdf"]
        coords, fields = decoder_fields(decoder, out, names, batch)
        colors = fields["color"][..., :3] if decoder.use_color else None
        return extract_mesh(coords, fields["sdf"], 4 * decoder.resolution, colors, fill_interior=fill_interior)

    # ------------------------------------------------------------------ queries
    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    @property
    def is_empty(self) -> bool:
        """True when the mesh has no faces."""
        return self.num_faces == 0

    def bounds(self) -> np.ndarray:
        """``[2, 3]``: the minimum and maximum corner of the vertices' bounding box."""
        if self.num_vertices == 0:
            raise ValueError("an empty mesh has no bounds")
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def to_trimesh(self) -> trimesh.Trimesh:
        """The mesh as a :class:`trimesh.Trimesh` (vertices and faces kept as they are)."""
        colors = None
        if self.vertex_colors is not None:
            colors = _rgba8(self.vertex_colors)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=colors, process=False)

    def __repr__(self) -> str:
        return f"Mesh(vertices={self.num_vertices}, faces={self.num_faces}, colored={self.vertex_colors is not None})"


def extract_mesh(coords: ArrayLike, corner_sdf: ArrayLike, grid_resolution: int,
                 corner_colors: Optional[ArrayLike] = None, *, fill_interior: bool = False) -> Mesh:
    """Mesh the zero level set of per-cube corner sdf values on a sparse ``R``³ grid.

    Args:
        coords: ``[N, 3]`` integer cube coordinates ``(x, y, z)`` in ``[0, R)``.
        corner_sdf: ``[N, 8]`` sdf per cube corner (corner order of :data:`CUBE_CORNERS`) as the
            decoder predicts it; the ``-1/R`` bias is added here. Negative is inside.
        grid_resolution: ``R``, cubes per side (``4·resolution`` for the mesh decoder).
        corner_colors: optional ``[N, 8, 3]`` RGB per cube corner.
        fill_interior: set vertices that no active cube touches but the active vertices enclose
            (not 6-connected to the outside through untouched vertices) to ``-1`` instead of ``+1``.
            This drops the inward-facing surface inside the active shell; the default reproduces
            the published field.

    Returns:
        The mesh in ``[-0.5, 0.5]``³ with outward normals, coloured when ``corner_colors`` is given;
        empty (no vertices) when no vertex is inside.
    """
    coords = as_numpy(coords).astype(np.int64, copy=False)
    corner_sdf = as_numpy(corner_sdf).astype(np.float64, copy=False)
    n = len(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [N, 3] (x, y, z), got {coords.shape}")
    if corner_sdf.shape != (n, 8):
        raise ValueError(f"corner_sdf must be [N, 8] = [{n}, 8], got {corner_sdf.shape}")
    if n and (coords.min() < 0 or coords.max() >= grid_resolution):
        raise ValueError(f"coords must lie in [0, {grid_resolution}), got [{coords.min()}, {coords.max()}]")
    values = [corner_sdf[..., None] - 1.0 / grid_resolution]
    if corner_colors is not None:
        corner_colors = as_numpy(corner_colors).astype(np.float64, copy=False)
        if corner_colors.shape != (n, 8, 3):
            raise ValueError(f"corner_colors must be [N, 8, 3] = [{n}, 8, 3], got {corner_colors.shape}")
        values.append(corner_colors)
    if n == 0:
        return Mesh.empty(colored=corner_colors is not None)

    keys, vertex_values = _vertex_table(coords, np.concatenate(values, axis=-1), grid_resolution)
    vertex_idx = _unkey(keys, grid_resolution + 1)
    vertex_sdf = vertex_values[:, 0]
    if not (vertex_sdf < 0).any():
        return Mesh.empty(colored=corner_colors is not None)

    # Dense sdf over the active vertices' bounding box plus a margin of untouched (+1) vertices.
    lo = vertex_idx.min(0) - 1
    dense = np.ones(vertex_idx.max(0) + 2 - lo, dtype=np.float32)
    dense[tuple((vertex_idx - lo).T)] = vertex_sdf
    if fill_interior:
        untouched = np.ones(dense.shape, dtype=bool)
        untouched[tuple((vertex_idx - lo).T)] = False
        labels, _ = ndimage.label(untouched)  # 6-connected; the margin is one outside component
        dense[(labels > 0) & (labels != labels[0, 0, 0])] = -1.0
    # skimage's "descent" orientation gives outward normals for an sdf negative inside with axes (x, y, z).
    verts, faces, _, _ = marching_cubes(dense, level=0.0, gradient_direction="descent", allow_degenerate=False)
    grid_pos = verts.astype(np.float64) + lo
    vertices = grid_pos / grid_resolution - 0.5

    colors = None
    if corner_colors is not None:
        rows = _nearest_active_vertex(grid_pos, keys, grid_resolution + 1)
        colors = np.clip(vertex_values[rows, 1:4], 0.0, 1.0)
    return Mesh(vertices, faces, colors)


# ---------------------------------------------------------------------------- helpers
def _rgba8(colors: np.ndarray) -> np.ndarray:
    """``[V, 3]`` float RGB in ``[0, 1]`` → ``[V, 4]`` uint8 RGBA (opaque)."""
    rgb = np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)


def _key(idx: np.ndarray, extent: int) -> np.ndarray:
    """``[..., 3]`` grid indices → int64 keys, ordered like ``(x, y, z)`` tuples."""
    return (idx[..., 0] * extent + idx[..., 1]) * extent + idx[..., 2]


def _unkey(keys: np.ndarray, extent: int) -> np.ndarray:
    return np.stack([keys // (extent * extent), (keys // extent) % extent, keys % extent], axis=-1)


def _vertex_table(coords: np.ndarray, corner_values: np.ndarray, grid_resolution: int) -> Tuple[np.ndarray, np.ndarray]:
    """Average per-cube corner values onto the shared grid vertices.

    Args:
        coords: ``[N, 3]`` cube coordinates.
        corner_values: ``[N, 8, C]`` values per cube corner.

    Returns:
        Sorted vertex keys ``[M]`` (see :func:`_key`, extent ``R + 1``) and the mean value of every
        vertex over the cubes that touch it, ``[M, C]``.
    """
    corner_keys = _key(coords[:, None, :] + CUBE_CORNERS[None], grid_resolution + 1).ravel()
    keys, inverse = np.unique(corner_keys, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    flat = corner_values.reshape(len(corner_keys), -1)
    means = np.stack([np.bincount(inverse, weights=flat[:, c], minlength=len(keys)) for c in range(flat.shape[1])], 1)
    return keys, means / counts[:, None]


def _nearest_active_vertex(grid_pos: np.ndarray, keys: np.ndarray, extent: int) -> np.ndarray:
    """Row in the vertex table of the nearest active grid vertex of each marching-cubes vertex.

    The candidates are the 8 corners of the grid cube that holds the vertex. A vertex on a grid edge
    gets its nearer active endpoint. Lewiner's marching cubes also puts vertices *inside* a cube for
    ambiguous cases; they get the cube's nearest active corner. Every cube that holds a vertex
    has one: it changes sign, and filled interior vertices never share a cube edge with outside ones.
    """
    corners = np.clip(np.floor(grid_pos).astype(np.int64)[:, None, :] + CUBE_CORNERS[None], 0, extent - 1)
    rows, found = _lookup(keys, _key(corners, extent))                      # [V, 8]
    dist = np.where(found, ((corners - grid_pos[:, None, :]) ** 2).sum(-1), np.inf)
    best = dist.argmin(1)
    pick = np.arange(len(grid_pos))
    if not np.isfinite(dist[pick, best]).all():
        raise RuntimeError("internal error: a mesh vertex lies in no cube with an active corner")
    return rows[pick, best]


def _lookup(sorted_keys: np.ndarray, query: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    rows = np.searchsorted(sorted_keys, query).clip(0, len(sorted_keys) - 1)
    return rows, sorted_keys[rows] == query

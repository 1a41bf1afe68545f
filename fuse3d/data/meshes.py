"""Untextured meshes of procedural objects: a stand-in for a user's own mesh (paper Fig. 10 textures
an untextured mesh with Fuse3D; :func:`fuse3d.assets.transfer_colors` then colours it)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from .primitives import ObjectSpec


def untextured_mesh(spec: ObjectSpec, resolution: int = 96, scale: float = 1.0,
                    offset: Sequence[float] = (0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """The zero level set of ``spec``'s signed distance, by marching cubes, without colours.

    Args:
        spec: a procedural object (in ``[-0.5, 0.5]``³, z up).
        resolution: samples per unit length of the sdf grid.
        scale, offset: move the mesh out of TRELLIS's frame (``vertices · scale + offset``), as a
            user's mesh in its own units would be.

    Returns:
        A watertight ``trimesh.Trimesh`` wound counter-clockwise seen from outside, without vertex colours.
    """
    lo, hi = (np.asarray(b, np.float64) for b in spec.bounds())
    step = 1.0 / resolution
    lo, hi = lo - 2 * step, hi + 2 * step
    axes = [np.arange(a, b + step, step) for a, b in zip(lo, hi)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    sdf, _ = spec.evaluate(points)
    vertices, faces, _, _ = marching_cubes(sdf.astype(np.float32), level=0.0, spacing=(step, step, step))
    vertices = (vertices + lo) * scale + np.asarray(offset, np.float64)
    return trimesh.Trimesh(vertices, faces, process=False)  # merging vertices by position would break watertightness

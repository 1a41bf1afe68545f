"""TRELLIS-style 64³ surface voxels of an object, each with its colour and part."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from .primitives import RESOLUTION, ObjectSpec


@dataclass
class VoxelObject:
    """Surface voxels of an object.

    Attributes:
        coords: int32 ``[N, 4]`` = (0, x, y, z), sorted by (x, y, z).
        part: int32 ``[N]`` index into ``part_names`` (the most-inside rule at the voxel centre).
        color: float32 ``[N, 3]`` surface colour at the voxel centre (pattern included).
        part_names: names of the parts.
        resolution: grid size (64).
    """

    coords: np.ndarray
    part: np.ndarray
    color: np.ndarray
    part_names: List[str]
    resolution: int = RESOLUTION

    def __len__(self) -> int:
        return len(self.coords)

    def occupancy(self) -> np.ndarray:
        """Dense bool ``[R, R, R]`` grid of the (surface) voxels."""
        g = np.zeros((self.resolution,) * 3, bool)
        g[self.coords[:, 1], self.coords[:, 2], self.coords[:, 3]] = True
        return g

    def positions(self) -> np.ndarray:
        """Voxel centres ``[N, 3]`` in ``[-0.5, 0.5]³``."""
        return (self.coords[:, 1:].astype(np.float64) + 0.5) / self.resolution - 0.5

    @staticmethod
    def from_coords(coords, resolution: int = RESOLUTION, color: Sequence[float] = (0.75, 0.75, 0.75)) -> "VoxelObject":
        """Wrap bare coords (``[N, 4]`` or ``[N, 3]``, e.g. a sampled structure) as one grey part."""
        c = np.asarray(coords)
        if c.shape[1] == 3:
            c = np.concatenate([np.zeros((len(c), 1), c.dtype), c], 1)
        c = c.astype(np.int32)
        c = c[np.lexsort((c[:, 3], c[:, 2], c[:, 1]))]
        return VoxelObject(c, np.zeros(len(c), np.int32), np.tile(np.asarray(color, np.float32), (len(c), 1)),
                           ["object"], resolution)


def voxelize(spec: ObjectSpec, resolution: int = RESOLUTION, supersample: int = 1) -> VoxelObject:
    """Surface voxels of ``spec`` on a ``resolution³`` grid over ``[-0.5, 0.5]³``.

    A voxel is occupied when its centre is inside the union (with ``supersample = s > 1``: when at
    least half of its ``s³`` regularly spaced sub-points are). It is a surface voxel when it is
    occupied and at least one of its 6 neighbours is not (outside the grid counts as empty). Each
    part is evaluated only over the voxels of its bounding box (plus one voxel).
    """
    R = int(resolution)
    s = int(supersample)
    centres = (np.arange(R) + 0.5) / R - 0.5
    best = np.full((R, R, R), np.inf, np.float32)
    lab = np.full((R, R, R), -1, np.int16)
    count = np.zeros((R, R, R), np.uint8) if s > 1 else None
    offs = ((np.arange(s) + 0.5) / s - 0.5) / R if s > 1 else None
    blocks = []
    for k, part in enumerate(spec.parts):
        lo, hi = part.bounds()
        i0 = np.clip(np.floor((lo + 0.5) * R - 0.5).astype(int) - 1, 0, R)
        i1 = np.clip(np.ceil((hi + 0.5) * R - 0.5).astype(int) + 2, 0, R)
        if np.any(i1 <= i0):
            blocks.append(None)
            continue
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        blocks.append(sl)
        xs, ys, zs = (centres[a:b] for a, b in zip(i0, i1))
        d = part.sdf(xs[:, None, None], ys[None, :, None], zs[None, None, :])
        d = np.broadcast_to(d, (len(xs), len(ys), len(zs)))
        sub_best = best[sl]
        m = d < sub_best
        sub_best[m] = d[m]
        lab[sl][m] = k
    if s > 1:
        for ox in offs:
            for oy in offs:
                for oz in offs:
                    inside = np.zeros((R, R, R), bool)
                    for part, sl in zip(spec.parts, blocks):
                        if sl is None:
                            continue
                        xs, ys, zs = (centres[b] for b in sl)
                        d = part.sdf(xs[:, None, None] + ox, ys[None, :, None] + oy, zs[None, None, :] + oz)
                        inside[sl] |= d <= 0
                    count += inside
        occ = count.astype(np.int32) * 2 >= s ** 3
    else:
        occ = best <= 0
    pad = np.pad(occ, 1)
    interior = (
        pad[:-2, 1:-1, 1:-1] & pad[2:, 1:-1, 1:-1] & pad[1:-1, :-2, 1:-1]
        & pad[1:-1, 2:, 1:-1] & pad[1:-1, 1:-1, :-2] & pad[1:-1, 1:-1, 2:]
    )
    surf = occ & ~interior
    ijk = np.argwhere(surf)  # C order: sorted by (x, y, z)
    part_idx = lab[surf].astype(np.int32)
    pos = (ijk + 0.5) / R - 0.5
    color = np.empty((len(ijk), 3), np.float32)
    for k, part in enumerate(spec.parts):
        m = part_idx == k
        if m.any():
            color[m] = part.color_at(pos[m, 0], pos[m, 1], pos[m, 2])
    coords = np.concatenate([np.zeros((len(ijk), 1), np.int64), ijk], 1).astype(np.int32)
    return VoxelObject(coords, part_idx, color, spec.part_names, R)


def surface_normals(spec: ObjectSpec, points: np.ndarray, eps: float = 0.5 / 64) -> np.ndarray:
    """Unit outward normals ``[N, 3]`` float32 of ``spec``'s surface at ``points [N, 3]``: the central
    difference of its signed distance (step ``eps``, half a 64³ voxel by default)."""
    grads = []
    for axis in range(3):
        d = np.zeros(3)
        d[axis] = eps
        grads.append(spec.evaluate(points + d)[0] - spec.evaluate(points - d)[0])
    g = np.stack(grads, -1)
    return (g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-8)).astype(np.float32)

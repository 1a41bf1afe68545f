"""Ground truth of the bundled examples (``fuse3d/examples/*``): which part each local image restyles,
that part's voxels, and its mask in the global image — to check alignment against the truth.

The examples are procedural objects (:mod:`fuse3d.data`), so their true 64³ part voxels are known
exactly. On fuse3d's own models a sampled structure is noise (random weights) or rough (the small
trained model); :func:`demo_structure` then gives the example's own voxels (a user structure, as in
the paper's Fig. 10) so that views stay readable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from scipy.spatial import cKDTree

from fuse3d.conditions import read_mask
from fuse3d.data import ObjectSpec, VoxelObject, random_object, voxelize
from fuse3d.method.fusion import patch_grid_mask
from fuse3d.models import fuse3d_home
from fuse3d.spec import RunSpec, example_spec, load_spec

from .style import is_toy_model


@dataclass
class Example:
    """A bundled example with its ground truth.

    Attributes:
        name: folder name (``chair``, ``car``, ``robot``, ``conflict``).
        spec: the run spec (conditions and parameters).
        meta: ``example.json`` (parts, views, colours).
        object: the procedural object.
        voxels: its surface voxels at 64³ with a part label each.
    """

    name: str
    spec: RunSpec
    meta: dict
    object: ObjectSpec
    voxels: VoxelObject

    @property
    def folder(self) -> Path:
        return self.spec.path.parent

    @property
    def structure(self) -> torch.Tensor:
        """The object's true voxels ``[N, 4]``, usable as ``pipe.run(..., structure=...)``."""
        return torch.from_numpy(self.voxels.coords)

    @property
    def parts(self) -> List[str]:
        """The part each local image restyles, in local order."""
        return [loc["part"] for loc in self.meta["locals"]]

    def run(self, pipe, structure="demo", **params):
        """``pipe.run`` on this example's conditions, seed and parameters (``params`` override them).

        Args:
            structure: ``"demo"`` (:func:`demo_structure`), ``"true"`` (the object's own voxels, so that
                every voxel has a true part), ``None`` (sample it from the global image), or anything
                ``pipe.run`` takes as a structure (voxel coords, a grid, a mesh).
        """
        if isinstance(structure, str):
            if structure not in ("demo", "true"):
                raise ValueError(f"structure must be 'demo', 'true', None or a structure, got {structure!r}")
            structure = demo_structure(pipe, self) if structure == "demo" else self.structure
        spec = self.spec
        return pipe.run(spec.global_condition, spec.local_conditions, seed=spec.seed, structure=structure,
                        **{**spec.params, **params})

    def truth(self, run) -> List[np.ndarray]:
        """Per local: ``[N]`` bool, the run's structure voxels that belong to its true part.

        Each structure voxel takes the part of the nearest true voxel (exact when the run's
        structure is :attr:`structure`).
        """
        _, nearest = cKDTree(self.voxels.coords[:, 1:]).query(run.structure[:, 1:].numpy())
        label = self.voxels.part[nearest]
        return [label == loc["part_index"] for loc in self.meta["locals"]]

    def global_part_patches(self, run, k: int) -> np.ndarray:
        """``[37, 37]`` bool: patches of the global image showing local ``k``'s part (from ``global_mask_k.png``)."""
        mask = read_mask(self.folder / self.meta["locals"][k]["global_mask"])
        pixel = run.global_condition.prepare().pre.transform_mask(mask)
        return patch_grid_mask(pixel)


def load_example(name: str = "chair") -> Example:
    """A bundled example and its ground truth."""
    path = example_spec(name)
    meta = json.loads((path.parent / "example.json").read_text())
    # the conflict example stores no spec: tools/make_examples.py drew it as random_object(seed, kind)
    obj = ObjectSpec.from_dict(meta["spec"]) if "spec" in meta else random_object(meta["seed"], kind=meta["kind"])
    return Example(name, load_spec(path), meta, obj, voxelize(obj))


def demo_structure(pipe, example: Example) -> Optional[torch.Tensor]:
    """The structure the notebooks use: ``None`` (sample it from the global image) with real
    weights; the example's true voxels on fuse3d's own models, whose sampled structures are noise
    (random weights) or rough (the small trained model), so that alignment is seen on the true shape."""
    return example.structure if is_toy_model(pipe) else None


def cache_dir() -> Path:
    """Where the notebooks keep their run cache: ``$FUSE3D_HOME/runs`` (default ``~/.cache/fuse3d/runs``)."""
    return fuse3d_home() / "runs"

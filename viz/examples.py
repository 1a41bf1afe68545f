"""The bundled examples (``fuse3d/examples/*``) with their ground truth, for the notebooks.

:func:`load_example` gives a :class:`fuse3d.data.ExampleSet`: the conditions exactly as
``fuse3d run spec.toml`` reads them, which part each local image restyles, that part's true voxels
(``example.truth(run)``) and its mask in the global image (``example.global_part_patches``).

The examples are procedural objects (:mod:`fuse3d.data`), so their true 64³ part voxels are known
exactly. On fuse3d's own models a sampled structure is noise (random weights) or rough (the small
trained model); :func:`demo_structure` then gives the example's own voxels (a user structure, as in
the paper's Fig. 10) so that views stay readable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from fuse3d.bundled import fuse3d_home
from fuse3d.data import ExampleSet
from fuse3d.spec import example_spec, load_spec

from .style import is_toy_model

class Example(ExampleSet):
    """A bundled example (:class:`fuse3d.data.ExampleSet`) whose :meth:`run` uses
    :func:`demo_structure` by default."""

    def run(self, pipe, structure="demo", **params):
        """``pipe.run`` on the example; ``structure="demo"``: :func:`demo_structure`, ``"true"``: the
        object's voxels, ``None``: sampled from the global image, or any structure ``pipe.run`` takes."""
        if isinstance(structure, str) and structure == "demo":
            structure = "true" if demo_structure(pipe, self) is not None else None
        return super().run(pipe, structure=structure, **params)


def load_example(name: str = "chair") -> Example:
    """A bundled example and its ground truth."""
    path = example_spec(name)
    return Example.from_folder(path.parent, load_spec(path))


def demo_structure(pipe, example: ExampleSet) -> Optional[torch.Tensor]:
    """The structure the notebooks use: ``None`` (sample it from the global image) with real
    weights; the example's true voxels on fuse3d's own models, whose sampled structures are noise
    (random weights) or rough (the small trained model), so that alignment is seen on the true shape."""
    return example.structure if is_toy_model(pipe) else None


def cache_dir() -> Path:
    """Where the notebooks keep their run cache: ``$FUSE3D_HOME/runs`` (default ``~/.cache/fuse3d/runs``)."""
    return fuse3d_home() / "runs"

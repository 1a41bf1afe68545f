"""Editing a given asset (paper Fig. 10b): :meth:`Fuse3D.edit <fuse3d.pipeline.Fuse3D.edit>`'s work.

An edit is a :class:`~fuse3d.pipeline.Run` with a ``base``: the structure and structured latent of
the asset being edited (an :class:`~fuse3d.assets.EncodedAsset`). Its stages are the inpainting
variant's (appendix C.2) with the given latent in place of the one sampled from the global image, so
the global capture is never needed and the final sampling keeps the base outside the aligned regions
exactly (:func:`fuse3d.stages._final`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .conditions import Condition, ConditionError
from .params import Fuse3DParams


def start_edit(fuse3d, source, local_conditions: Sequence[Condition], global_condition: Optional[Condition],
               seed: int, lazy: bool, views: int, params: dict):
    """The run of ``fuse3d.edit(...)`` (see its docstring); a run as ``source`` comes as its
    :meth:`~fuse3d.pipeline.Run.as_asset`."""
    from .assets.encode import EncodedAsset

    if params.get("inpainting", True) is not True:
        raise ValueError("an edit keeps the given latent outside the aligned regions: inpainting is always on")
    if "structure" in params:
        raise TypeError("an edit keeps the structure of its source; give no structure")
    local_conditions = list(local_conditions)
    if not local_conditions:
        raise ConditionError("an edit needs at least one local condition")
    base = source if isinstance(source, EncodedAsset) else fuse3d.encode(source, views=views)
    if global_condition is None:
        global_condition = asset_condition(base)
    base = base.sorted()
    channels = fuse3d.trellis.slat_flow.in_channels
    if base.latent.shape[1] != channels:
        raise ValueError(f"the latent to edit has {base.latent.shape[1]} channels; {fuse3d.model_name}'s has {channels}")
    p = Fuse3DParams.for_model(fuse3d.defaults, seed=seed, **{**params, "inpainting": True})
    return fuse3d._start(global_condition, local_conditions, p, base.coords, lazy, base=base)


def asset_condition(base) -> Condition:
    """The global condition of an edit without one: a 3/4 render of the encoded asset."""
    from PIL import Image

    if base.voxels is None:
        raise ConditionError(f"{base.name} has no surface colours to render; give the edit a global_condition")
    rgba = base.voxels.render(size=518).rgba
    return Condition(Image.fromarray(rgba, "RGBA"), name=f"{base.name} (render)")


def run_as_asset(run):
    """A run's structure and final latent as an :class:`~fuse3d.assets.EncodedAsset`."""
    from .assets.encode import EncodedAsset

    what = "edit" if run.base is not None else "run"
    return EncodedAsset(run.structure.clone(), run.entry("final")["feats"].float().clone(),
                        f"{what} {run.key('final')[:8]}", f"the final latent of a {run.model_name} {what}")


def edit_summary(run) -> dict:
    """What an edit's summary adds: what it edits, and how many voxels it regenerated and kept."""
    out = {"edits": run.base.name, "edited_latent": run.base.source}
    if all(run._available("refine", k) for k in range(run.K)):
        aligned = torch.stack([run.refined_mask(k) for k in range(run.K)]).any(0)[run.voxel_cell]
        out["regenerated_voxels"] = int(aligned.sum())
        out["kept_voxels"] = int(len(aligned) - aligned.sum())
    return out

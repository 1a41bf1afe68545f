"""Causal effects of interventions on a run: which heads carry a local image's content into its part?

:func:`head_effects` ablates each head (in each block, or in all blocks at once) in the final
sampling and measures how much the colour of a set of voxels changes against the unablated run: the
mean absolute RGB change of their decoded Gaussians (:meth:`fuse3d.assets.Gaussians.voxel_colors`).
Every ablated run shares all stages up to the final sampling with the original
(:meth:`fuse3d.pipeline.Run.intervene`), so each costs one final sampling and one decoding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def color_change(run, other, voxels: np.ndarray) -> float:
    """Mean absolute RGB change of ``voxels`` (``[N]`` bool over the structure) between two runs."""
    n = len(run.structure)
    a = run.gaussians.voxel_colors(n)[voxels]
    b = other.gaussians.voxel_colors(n)[voxels]
    return float(np.abs(a - b).mean()) if len(a) else 0.0


def head_effects(run, k: int, voxels: Optional[np.ndarray] = None, blocks: Optional[Sequence[int]] = "each",
                 heads: Optional[Sequence[int]] = None, mode: str = "zero", progress: bool = True) -> dict:
    """The colour change of local ``k``'s part when each head is ablated.

    Args:
        voxels: ``[N]`` bool, the part's voxels (default: the voxels aligned with local ``k``).
        blocks: ``"each"`` (one ablation per head and block: a ``[heads, blocks]`` table) or ``None``
            (each head ablated in every block at once: ``[heads, 1]``).
        heads: which heads (default: all).
    Returns:
        ``{"effect": [H, B] array, "heads": [...], "blocks": [...] or ["all"]}``.
    """
    from tqdm.auto import tqdm

    voxels = run.aligned_voxels(k).numpy() if voxels is None else np.asarray(voxels, bool)
    heads = list(range(run.num_heads)) if heads is None else [int(h) for h in heads]
    columns = list(range(run.num_blocks)) if blocks == "each" else ["all"]
    effect = np.zeros((len(heads), len(columns)))
    cells = [(i, h, j, b) for i, h in enumerate(heads) for j, b in enumerate(columns)]
    for i, h, j, b in tqdm(cells, desc="Ablating heads", disable=not progress):
        spec = {blk: [h] for blk in range(run.num_blocks)} if b == "all" else {b: [h]}
        effect[i, j] = color_change(run, run.intervene(ablate_heads=spec, mode=mode), voxels)
    return {"effect": effect, "heads": heads, "blocks": columns}


def top_heads(effects: dict, n: int = 3) -> list:
    """The ``n`` (head, block) cells with the largest effect, largest first."""
    e = effects["effect"]
    order = np.argsort(e, axis=None)[::-1][:n]
    return [(effects["heads"][i], effects["blocks"][j], float(e[i, j])) for i, j in zip(*np.unravel_index(order, e.shape))]

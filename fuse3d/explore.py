"""Attention from both sides, on demand: what a cell looks at in every image, and which cells look at
chosen patches (the ``explore`` stage, cached like every stage; ``viz.explore`` draws it).

The capture stage keeps only what alignment needs (sums over each local image's selected tokens), so
a question about one cell or a few patches runs the capture samplings again with a processor that
keeps exactly that: ``[heads, chosen cells, tokens]`` rows, or ``[heads, cells]`` for chosen patches —
never the full ``[heads, cells, tokens]`` map. Every condition is fed its full tokens (all 1369
patches), with the capture's noise, so for a local image fed its full tokens the rows summed over
its selected tokens are exactly its forward capture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

GRID = 37


@dataclass
class CellAttention:
    """Attention rows of chosen cells in every condition's sampling.

    Attributes:
        cells: ``[n]`` cell indices (into ``run.cells``).
        rows: per condition (locals, then the global image), ``[heads, n, fed tokens]`` (each row sums to 1).
        fed: per condition, the token index of each fed column (``prefix + patch`` for patches).
        prefix: CLS + register tokens per image (5), so patch ``p`` is token ``prefix + p``.
    """

    cells: torch.Tensor
    rows: List[torch.Tensor]
    fed: List[torch.Tensor]
    prefix: int

    def patch_maps(self, heads: Optional[Sequence[int]] = None) -> List[np.ndarray]:
        """Per condition, ``[37, 37]``: the attention to each patch, averaged over ``heads`` (default:
        all) and summed over the chosen cells' rows divided by their count (a mean row)."""
        maps = []
        for rows, fed in zip(self.rows, self.fed):
            r = rows if heads is None else rows[list(heads)]
            mean = r.mean(dim=(0, 1)).numpy()  # [fed tokens]
            grid = np.zeros(GRID * GRID, np.float64)
            patch = fed.numpy() - self.prefix
            keep = patch >= 0
            grid[patch[keep]] = mean[keep]
            maps.append(grid.reshape(GRID, GRID))
        return maps


def _explored(run, **params):
    return run.retune(**params) if any(getattr(run.params, k) != v for k, v in params.items()) else run


def cell_attention(run, cells: Sequence[int], blocks: Optional[Sequence[int]] = None,
                   steps: Optional[Sequence[int]] = None) -> CellAttention:
    """The attention rows of ``cells`` in every condition's capture sampling (runs those samplings
    once per distinct question; cached)."""
    cells = sorted({int(c) for c in cells})
    n = len(run.cells)
    if not cells or cells[0] < 0 or cells[-1] >= n:
        raise ValueError(f"cells must be indices into the run's {n} cells, got {cells}")
    r = _explored(run, explore_cells=tuple(cells), explore_patches=None,
                  explore_blocks=None if blocks is None else tuple(blocks),
                  explore_steps=None if steps is None else tuple(steps))
    entries = [r.entry("explore", i) for i in range(run.K + 1)]
    return CellAttention(torch.tensor(cells), [e["rows"] for e in entries], [e["fed_tokens"] for e in entries],
                         run.prefix if run.params.prefix_tokens else 0)


def patch_attention(run, condition: int, patches: Sequence[int], blocks: Optional[Sequence[int]] = None,
                    steps: Optional[Sequence[int]] = None) -> torch.Tensor:
    """``[heads, cells]``: how much every cell attends to ``patches`` of condition ``condition``
    (0-based: locals, then the global image at ``run.K``), summed over those patches, averaged over
    ``blocks`` and ``steps`` of that condition's capture sampling."""
    patches = sorted({int(t) for t in patches})
    if not 0 <= condition <= run.K:
        raise ValueError(f"condition must be 0…{run.K} (locals, then the global image), got {condition}")
    if not patches or patches[0] < 0 or patches[-1] >= GRID * GRID:
        raise ValueError(f"patches must be indices into the 37×37 grid, got {patches}")
    r = _explored(run, explore_cells=None, explore_patches=((condition, tuple(patches)),),
                  explore_blocks=None if blocks is None else tuple(blocks),
                  explore_steps=None if steps is None else tuple(steps))
    return r.entry("explore", condition)["patch_scores"]

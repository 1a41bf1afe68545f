"""The Fuse3D method as pure tensor functions (no model loading, no disk).

* :mod:`~fuse3d.method.fusion` — Multi-Condition Fusion Module: patch masks, token selection, unified tokens.
* :mod:`~fuse3d.method.alignment` — 3D semantic-aware alignment: forward, refine (kNN vote), reverse.
* :mod:`~fuse3d.method.enhancement` — local attention enhancement: λ per region, region tables.
* :mod:`~fuse3d.method.capture` — what alignment needs from a sampling's cross-attention (targets,
  running sums, processors, the separate and shared strategies).
* :mod:`~fuse3d.method.kernels` — log-sum-exp, enhanced, region-split and flex attention.
* :mod:`~fuse3d.method.seeds`, :mod:`~fuse3d.method.inpainting` — seed derivation, the C.2 variant.
* :mod:`~fuse3d.method.reference` — the whole method, uncached, on one page.
"""
from .alignment import (
    DEFAULT_HEADS,
    DEFAULT_THRESHOLD,
    cells_of_voxels,
    cells_to_voxels,
    forward_alignment,
    refine,
    reverse_alignment,
    unaligned_cells,
)
from .enhancement import EnhancementTables, enhancement_tables, region_lambdas
from .fusion import UnifiedTokens, foreground_patches, patch_grid_mask, select_tokens, unify_tokens

__all__ = ["DEFAULT_HEADS", "DEFAULT_THRESHOLD", "cells_of_voxels", "cells_to_voxels", "forward_alignment", "refine",
           "reverse_alignment", "unaligned_cells", "EnhancementTables", "enhancement_tables", "region_lambdas",
           "UnifiedTokens", "foreground_patches", "patch_grid_mask", "select_tokens", "unify_tokens"]

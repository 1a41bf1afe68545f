"""Multi-Condition Fusion Module (MCFM, paper §3.2) — pure functions on masks and tokens.

Every condition image is encoded whole; its tokens are ``[CLS, REG×r, patches row-major]``
(``prefix = 1 + r`` = 5 for TRELLIS). A local image keeps the prefix and the patch tokens its 2D
region selects (``D_k``); the unified condition concatenates, in this order::

    [local_1 (prefix + D_1), …, local_K (prefix + D_K), global (prefix + D_g)]

Patch ``(i, j)`` of the ``g × g`` grid is patch index ``g·i + j`` and token ``prefix + g·i + j``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


def patch_grid_mask(pixel_mask: np.ndarray, patch_size: int = 14, min_coverage: float = 0.0) -> np.ndarray:
    """Pixel mask ``[S, S]`` (bool) → patch mask ``[S/p, S/p]``.

    A patch is selected when the share of its pixels that are selected exceeds ``min_coverage``
    (default 0: any selected pixel, as the published code does); ``min_coverage`` in ``(0, 1]``
    requires at least that share.
    """
    m = np.asarray(pixel_mask, dtype=bool)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] % patch_size:
        raise ValueError(f"pixel mask must be square with a side divisible by {patch_size}, got {m.shape}")
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
    g = m.shape[0] // patch_size
    share = m.reshape(g, patch_size, g, patch_size).mean(axis=(1, 3))
    return share > 0 if min_coverage == 0 else share >= min_coverage


def foreground_patches(image: np.ndarray, patch_size: int = 14) -> np.ndarray:
    """Patches holding any non-black pixel of a preprocessed (premultiplied on black) image ``[S, S, 3]``."""
    arr = np.asarray(image)
    return patch_grid_mask(arr.reshape(*arr.shape[:2], -1).sum(-1) != 0, patch_size)


def patch_indices(patch_mask: np.ndarray) -> torch.Tensor:
    """Flattened (row-major) indices of the selected patches, ``[P]`` long."""
    return torch.from_numpy(np.flatnonzero(np.asarray(patch_mask, dtype=bool).reshape(-1))).long()


def token_indices(patches: torch.Tensor, prefix: int) -> torch.Tensor:
    """Token indices of ``prefix`` special tokens followed by the given patches: ``[prefix + P]``."""
    return torch.cat([torch.arange(prefix), patches.long() + prefix])


def select_tokens(tokens: torch.Tensor, patches: torch.Tensor, prefix: int, keep_prefix: bool = True) -> torch.Tensor:
    """``tokens [T, C]`` → ``[prefix + P, C]``: the CLS and register tokens and the selected patch
    tokens (``keep_prefix=False``: ``[P, C]``, the patch tokens alone, as in the paper's appendix C.1)."""
    idx = token_indices(patches, prefix) if keep_prefix else patches.long() + prefix
    return tokens[idx.to(tokens.device)]


@dataclass
class UnifiedTokens:
    """The unified condition of the final sampling.

    Attributes:
        tokens: ``[T, C]`` in the order ``[local_1, …, local_K, global]``.
        token_region: ``[T]`` long: ``k`` for local ``k`` (0-based), ``K`` for the global image.
        token_patch: ``[T]`` long: the patch index of each token in its own image, ``-1`` for CLS/REG.
    """

    tokens: torch.Tensor
    token_region: torch.Tensor
    token_patch: torch.Tensor

    @property
    def num_regions(self) -> int:
        return int(self.token_region.max().item()) + 1


def unify_tokens(selected: Sequence[torch.Tensor], patches: Sequence[torch.Tensor], prefix: int) -> UnifiedTokens:
    """Concatenate per-image selected tokens (locals first, the global image last).

    Args:
        selected: per image ``[prefix + P_k, C]`` as returned by :func:`select_tokens`.
        patches: per image the ``[P_k]`` patch indices those tokens came from.
    """
    if len(selected) != len(patches) or not selected:
        raise ValueError("unify_tokens needs one patch list per token set, and at least one image")
    regions, patch_ids = [], []
    for r, (tok, p) in enumerate(zip(selected, patches)):
        if tok.shape[0] != prefix + len(p):
            raise ValueError(f"image {r}: {tok.shape[0]} tokens for {len(p)} patches and {prefix} prefix tokens")
        regions.append(torch.full((tok.shape[0],), r, dtype=torch.long))
        patch_ids.append(torch.cat([torch.full((prefix,), -1, dtype=torch.long), p.long().cpu()]))
    return UnifiedTokens(torch.cat(list(selected)), torch.cat(regions), torch.cat(patch_ids))

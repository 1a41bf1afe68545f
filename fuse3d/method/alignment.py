"""3D semantic-aware alignment (paper §3.3, appendix A.1–A.2) — pure functions.

The latent flow's cross-attention queries are *cells* (the 32³ grid, a voxel's cell is
``coord // 2``), so alignment is computed on cells and mapped back to the 64³ voxels.

* Forward: a local image's score per cell is the attention (softmax over tokens) its selected
  tokens receive, averaged over blocks, steps and the chosen heads; min–max normalised; above the
  threshold a cell is aligned; a k-nearest-neighbour majority vote then fills holes and clears outliers.
* Reverse: the global image's score per token is the attention (softmax over cells) it receives
  from the cells no local image claimed, averaged likewise; min–max; above the threshold a token
  joins ``D_g``.

Heads are 0-based (the paper's heads 1, 5, 13 are ``[0, 4, 12]``).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Tuple

import numpy as np
import torch

DEFAULT_HEADS = (0, 4, 12)
DEFAULT_THRESHOLD = 0.55


def cells_of_voxels(coords: torch.Tensor, factor: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """``coords [N, 4]`` → ``(cells [M, 4], voxel_cell [N])``.

    Cells are sorted by ``(batch, x, y, z)`` exactly as the latent flow orders its queries;
    ``voxel_cell[n]`` is the row of voxel ``n``'s cell.
    """
    c = coords.long().clone()
    c[:, 1:] //= factor
    cells, inverse = torch.unique(c, dim=0, sorted=True, return_inverse=True)
    return cells.int(), inverse


def check_heads(heads: Sequence[int], num_heads: int) -> list:
    heads = [int(h) for h in heads]
    if not heads:
        raise ValueError("heads must name at least one head")
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad:
        raise ValueError(f"heads {bad} out of range: the model has heads 0..{num_heads - 1} (0-based)")
    return heads


def check_threshold(threshold: float) -> float:
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return float(threshold)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min–max normalise to ``[0, 1]``; a constant input gives all zeros (nothing stands out)."""
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def forward_alignment(head_scores: torch.Tensor, heads: Sequence[int] = DEFAULT_HEADS,
                      threshold: float = DEFAULT_THRESHOLD) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cells a local image's selected tokens attend to.

    Args:
        head_scores: ``[heads, cells]``: per head, the selected tokens' attention summed over the
            selected tokens and averaged over blocks and steps.
        heads: which heads to average (0-based).
        threshold: on the min–max normalised score.

    Returns:
        ``(score [cells] in [0, 1], mask [cells] bool)``.
    """
    heads = check_heads(heads, head_scores.shape[0])
    score = minmax(head_scores[heads].float().mean(0))
    return score, score > check_threshold(threshold)


def neighbourhoods(cell_xyz: torch.Tensor, k: int = 16, ties: Literal["include", "index"] = "include"):
    """The ``k`` nearest cells of every cell (itself included), with a deterministic tie rule.

    On a lattice many neighbours tie in distance (6 at 1, 12 at √2, 8 at √3), so "the k nearest" is
    ambiguous. ``ties="include"`` (default) keeps every cell tied with the k-th distance, so a
    neighbourhood can hold more than ``k`` cells and is symmetric under lattice symmetries.
    ``ties="index"`` keeps exactly ``k``, preferring the lower cell index (cells sorted by x, y, z).

    Returns:
        ``(index [M, W] long, valid [M, W] bool)``: neighbour rows padded to width ``W``.
    """
    from scipy.spatial import cKDTree

    if ties not in ("include", "index"):
        raise ValueError(f"ties must be 'include' or 'index', got {ties!r}")
    xyz = np.asarray(cell_xyz, dtype=np.int64)
    m = len(xyz)
    if m == 0:
        return torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool)
    k = min(k, m)
    tree = cKDTree(xyz)
    query = min(m, max(4 * k, k + 64))
    while True:
        _, idx = tree.query(xyz, k=query)
        idx = idx.reshape(m, -1)
        d2 = ((xyz[idx] - xyz[:, None, :]) ** 2).sum(-1)  # exact integer squared distances
        order = np.lexsort((idx, d2), axis=-1)  # by distance, then by cell index
        d2 = np.take_along_axis(d2, order, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        kth = d2[:, k - 1 : k]
        if query == m or np.all(d2[:, -1] > kth[:, 0]):
            break
        query = min(m, query * 2)  # some tie group may continue past what we fetched
    if ties == "include":
        valid = d2 <= kth
    else:
        valid = np.broadcast_to(np.arange(idx.shape[1])[None, :] < k, idx.shape).copy()
    width = int(valid.sum(1).max())
    return torch.from_numpy(idx[:, :width]), torch.from_numpy(valid[:, :width])


def refine(mask: torch.Tensor, cell_xyz: torch.Tensor, k: int = 16, fill: float = 0.6, clear: float = 0.4,
           ties: Literal["include", "index"] = "include",
           neighbours: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """One majority vote over k-nearest neighbourhoods (appendix A.1).

    An unselected cell is filled when at least ``fill`` of its neighbourhood is selected; a selected
    cell is cleared when less than ``clear`` is. The cell itself counts as a neighbour.
    ``neighbours``: :func:`neighbourhoods` of ``cell_xyz`` with this ``k`` and ``ties``, when
    already computed (they depend on the cells only, not on the mask).
    """
    if not (0.0 <= clear <= fill <= 1.0):
        raise ValueError(f"need 0 <= clear <= fill <= 1, got fill={fill}, clear={clear}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    mask = mask.bool().cpu()
    if mask.numel() == 0:
        return mask
    idx, valid = neighbourhoods(cell_xyz, k, ties) if neighbours is None else neighbours
    m, valid = mask.numpy(), valid.numpy()
    share = (m[idx.numpy()] & valid).sum(1) / valid.sum(1)  # small arrays: numpy, no thread pool
    out = m.copy()
    out[(~m) & (share >= fill)] = True
    out[m & (share < clear)] = False
    return torch.from_numpy(out)


def unaligned_cells(aligned: Sequence[torch.Tensor], num_cells: int) -> torch.Tensor:
    """Cells no local image is aligned with: ``V_unaligned = all \\ ∪_k V_k``."""
    out = torch.ones(num_cells, dtype=torch.bool)
    for m in aligned:
        out &= ~m.bool().cpu()
    return out


def reverse_alignment(cell_attention: torch.Tensor, unaligned: torch.Tensor, heads: Sequence[int] = DEFAULT_HEADS,
                      threshold: float = DEFAULT_THRESHOLD) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global-image tokens the unaligned cells need.

    Args:
        cell_attention: ``[heads, cells, tokens]``: attention normalised over cells (softmax along
            the cell axis), averaged over blocks and steps, for the candidate tokens.
        unaligned: ``[cells]`` bool.

    Returns:
        ``(score [tokens] in [0, 1], selected [tokens] bool)``. With no unaligned cell nothing is selected.
    """
    heads = check_heads(heads, cell_attention.shape[0])
    threshold = check_threshold(threshold)
    if not bool(unaligned.any()):
        zeros = torch.zeros(cell_attention.shape[2])
        return zeros, zeros.bool()
    per_token = cell_attention[heads].float().mean(0)[unaligned.to(cell_attention.device)].sum(0)
    score = minmax(per_token.cpu())
    return score, score > threshold


def cells_to_voxels(cell_mask: torch.Tensor, voxel_cell: torch.Tensor) -> torch.Tensor:
    """A per-cell mask ``[M]`` → per-voxel ``[N]`` (a voxel follows its cell)."""
    return cell_mask.cpu()[voxel_cell.cpu()]

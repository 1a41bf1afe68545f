"""Scores of fuse3d's outputs against ground truth: masks, voxel sets, colours, alignment.

Used by the evaluation (:mod:`fuse3d.train.evaluate`), the head tuner and the views, so the numbers a
notebook shows and the ones ``docs/evaluation.md`` reports are the same functions.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence

import numpy as np
from scipy.spatial import cKDTree


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool arrays (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """IoU, precision and recall of a predicted bool mask against a true one."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    hit = int((pred & truth).sum())
    return {"iou": iou(pred, truth), "precision": hit / max(int(pred.sum()), 1), "recall": hit / max(int(truth.sum()), 1)}


def voxel_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two voxel sets given as integer coordinates ``[N, 3]`` and ``[M, 3]``."""
    a = {tuple(v) for v in np.asarray(pred).tolist()}
    b = {tuple(v) for v in np.asarray(truth).tolist()}
    return len(a & b) / max(len(a | b), 1)


def voxel_f_score(pred: np.ndarray, truth: np.ndarray, tolerance: float = 1.0) -> dict:
    """Precision, recall and F-score of voxel sets, a voxel matching within ``tolerance`` (Chebyshev)."""
    if len(pred) == 0 or len(truth) == 0:
        return {"precision": 0.0, "recall": 0.0, "f_score": 0.0}
    precision = float((cKDTree(truth).query(pred, p=np.inf)[0] <= tolerance).mean())
    recall = float((cKDTree(pred).query(truth, p=np.inf)[0] <= tolerance).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f_score": f}


def voxel_extents(coords: np.ndarray) -> List[int]:
    """Bounding-box extents ``[x, y, z]`` in voxels of voxel coords ``[N, 3]`` (zeros when empty)."""
    return [0, 0, 0] if len(coords) == 0 else [int(v) for v in np.max(coords, 0) - np.min(coords, 0) + 1]


def alignment_table(run, truth: Sequence[np.ndarray], head_sets: Iterable[Sequence[int]],
                    thresholds: Iterable[float], refine: bool = True) -> List[dict]:
    """One row per (heads, threshold, local): IoU, precision and recall of the aligned voxels.

    Computed from the cached capture (``run.retune``; no network runs).

    Args:
        truth: per local ``[N]`` bool, the structure voxels of the part it restyles.
        head_sets: 0-based head lists to compare.
        thresholds: forward-alignment thresholds.
    """
    rows = []
    for heads in head_sets:
        for thr in thresholds:
            tuned = run.retune(heads=list(heads), threshold=float(thr), refine=refine)
            for k, t in enumerate(truth):
                pred = tuned.aligned_voxels(k, refined=True).numpy()
                rows.append({"heads": tuple(int(h) for h in heads), "threshold": float(thr), "local": k,
                             **mask_scores(pred, t)})
    return rows


def mean_iou(rows: Sequence[dict]) -> dict:
    """``(heads, threshold) → IoU`` averaged over rows (local images, objects)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((tuple(r["heads"]), r["threshold"]), []).append(r["iou"])
    return {key: float(np.mean(v)) for key, v in groups.items()}


def part_color_error(rgb: np.ndarray, target: np.ndarray, label: np.ndarray) -> float:
    """Mean absolute RGB error per part (``label``), averaged over parts."""
    errs = [np.abs(rgb[label == p] - target[label == p]).mean() for p in np.unique(label)]
    return float(np.mean(errs))


def fused_color_scores(rgb: np.ndarray, target: np.ndarray) -> dict:
    """How one part's colours ``rgb [n, 3]`` differ from its ``target [n, 3]``: ``error`` (mean
    absolute RGB error per voxel), split into ``mean_color_error`` (the part's mean colour against the
    target's, mean over channels: a shift of the whole part) and ``spread`` (the per-channel standard
    deviation of the part's colours, mean over channels: scatter within it), with ``target_spread``
    (the target's own, non-zero for a patterned part) for scale."""
    rgb, target = np.asarray(rgb, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if rgb.shape != target.shape or rgb.ndim != 2 or len(rgb) == 0:
        raise ValueError(f"need two equal, non-empty [n, 3] colour arrays, got {rgb.shape} and {target.shape}")
    return {"error": float(np.abs(rgb - target).mean()),
            "mean_color_error": float(np.abs(rgb.mean(0) - target.mean(0)).mean()),
            "spread": float(rgb.std(0).mean()), "target_spread": float(target.std(0).mean())}

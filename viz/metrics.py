"""How well forward alignment finds the true part: IoU of aligned vs ground-truth voxels over head
sets and thresholds, computed from the cached capture (``run.retune``; no network runs).
"""
from __future__ import annotations

from typing import Iterable, List, Sequence

import numpy as np
import plotly.graph_objects as go

from . import style


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool arrays (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def alignment_table(run, truth: Sequence[np.ndarray], head_sets: Iterable[Sequence[int]],
                    thresholds: Iterable[float], refine: bool = True) -> List[dict]:
    """One row per (heads, threshold, local): IoU, precision and recall of the aligned voxels.

    Args:
        truth: per local ``[N]`` bool true part voxels (e.g. :meth:`viz.examples.Example.truth`).
        head_sets: 0-based head lists to compare.
        thresholds: forward-alignment thresholds.
    """
    rows = []
    for heads in head_sets:
        for thr in thresholds:
            tuned = run.retune(heads=list(heads), threshold=float(thr), refine=refine)
            for k, t in enumerate(truth):
                pred = tuned.aligned_voxels(k, refined=True).numpy()
                hit = int((pred & t).sum())
                rows.append({"heads": tuple(int(h) for h in heads), "threshold": float(thr), "local": k,
                             "iou": iou(pred, t), "precision": hit / max(int(pred.sum()), 1),
                             "recall": hit / max(int(t.sum()), 1)})
    return rows


def mean_iou(rows: Sequence[dict]) -> dict:
    """``(heads, threshold) → IoU`` averaged over the local images."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["heads"], r["threshold"]), []).append(r["iou"])
    return {key: float(np.mean(v)) for key, v in groups.items()}


def iou_figure(rows: Sequence[dict], source=None) -> go.Figure:
    """Heat map of the mean IoU (over local images) per head set and threshold."""
    table = mean_iou(rows)
    heads = list(dict.fromkeys(k[0] for k in table))
    thresholds = sorted({k[1] for k in table})
    z = np.array([[table[(h, t)] for t in thresholds] for h in heads])
    labels = [", ".join(map(str, h)) if len(h) <= 4 else f"{len(h)} heads" for h in heads]
    fig = go.Figure(go.Heatmap(z=z, x=[f"{t:g}" for t in thresholds], y=labels, colorscale=style.SCORE_SCALE,
                               zmin=0, zmax=1, text=np.round(z, 2), texttemplate="%{text}",
                               colorbar=dict(title="mean IoU"),
                               hovertemplate="heads %{y}<br>threshold %{x}<br>IoU %{z:.3f}<extra></extra>"))
    fig.update_layout(title=style.title("Aligned vs ground-truth part voxels: mean IoU over local images", source),
                      xaxis_title="threshold", yaxis_title="heads (0-based)", height=140 + 40 * len(heads), width=760,
                      yaxis=dict(type="category", autorange="reversed"), margin=dict(l=10, r=10, t=80, b=40))
    return fig

"""How well forward alignment finds the true part: IoU of aligned vs ground-truth voxels over head
sets and thresholds, computed from the cached capture (``run.retune``; no network runs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from fuse3d.metrics import alignment_table, iou, mean_iou

from . import style

__all__ = ["alignment_table", "iou", "iou_figure", "mean_iou"]


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

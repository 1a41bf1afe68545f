"""How well forward alignment finds the true part: IoU of aligned vs ground-truth voxels over head
sets and thresholds, computed from the cached capture (``run.retune``; no network runs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from fuse3d.metrics import alignment_table, iou, mean_iou

from . import style

__all__ = ["alignment_table", "iou", "iou_figure", "mean_iou", "sweep_figure"]


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


def sweep_figure(result, rows: str = "heads", cols: str = "threshold", metric: str = "iou", source=None) -> go.Figure:
    """Heat map of a :class:`fuse3d.sweep.SweepResult`: ``metric`` averaged over its cases and local
    images (and any other grid field), ``rows`` × ``cols``, the best cell outlined; the cases'
    select-all IoU is given for scale. ``source`` (the pipe) names the model as every view does."""
    table = result.heatmap(rows, cols, metric)
    z = table.to_numpy(dtype=float)
    lower_better = metric.endswith("error")
    best = np.unravel_index(np.nanargmin(z) if lower_better else np.nanargmax(z), z.shape)
    x = [f"{c:g}" if isinstance(c, float) else str(c) for c in table.columns]
    y = [str(r) for r in table.index]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale=style.SCORE_SCALE, reversescale=lower_better,
                               zmin=0 if metric == "iou" else None, zmax=1 if metric == "iou" else None,
                               text=np.round(z, 3), texttemplate="%{text}", colorbar=dict(title="mean IoU" if metric == "iou" else f"mean {metric}"),
                               hovertemplate=f"{rows} %{{y}}<br>{cols} %{{x}}<br>{metric} %{{z:.3f}}<extra></extra>"))
    fig.add_shape(type="rect", x0=best[1] - 0.5, x1=best[1] + 0.5, y0=best[0] - 0.5, y1=best[0] + 0.5,
                  line=dict(color=style.HIGHLIGHT, width=3))
    ok = result.ok
    cases = ok["case"].nunique()
    scale = ""
    if metric == "iou" and ok["select_all_iou"].notna().any():
        scale = f"; selecting every voxel scores {ok.drop_duplicates(['case', 'local'])['select_all_iou'].mean():.3f}"
    name = "IoU" if metric == "iou" else metric
    label = style.model_label(source) if source is not None else f"model: {result.model}"
    title = dict(text=f"Sweep: mean {name} over {cases} case(s) and their local images<br><sup>best {rows} {y[best[0]]}, "
                      f"{cols} {x[best[1]]}: {z[best]:.3f}{scale}</sup><br><sup>{label}</sup>", x=0.01, xanchor="left",
                 font=dict(size=16))
    fig.update_layout(title=title, xaxis_title=cols, yaxis_title=rows, height=180 + 36 * len(y), width=820,
                      xaxis=dict(type="category"), yaxis=dict(type="category", autorange="reversed"),
                      margin=dict(l=10, r=10, t=100, b=40))
    return fig

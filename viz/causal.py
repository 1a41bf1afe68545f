"""Causal views: how much each head changes a part when it is ablated (:mod:`fuse3d.causal`)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from . import style


def intervention_figure(effects: dict, source=None, part: str = "the part") -> go.Figure:
    """Heat map of :func:`fuse3d.causal.head_effects`: heads × blocks, the colour change of ``part``."""
    e = np.asarray(effects["effect"])
    cols = [f"block {b}" if b != "all" else "all blocks" for b in effects["blocks"]]
    rows = [f"head {h}" for h in effects["heads"]]
    fig = go.Figure(go.Heatmap(z=e, x=cols, y=rows, colorscale=style.SCORE_SCALE, zmin=0,
                               colorbar=dict(title="colour change"), text=np.round(e, 3), texttemplate="%{text}",
                               hovertemplate="%{y}, %{x}<br>mean |Δ RGB| %{z:.4f}<extra></extra>"))
    fig.update_layout(title=style.title(f"Which heads carry the local image into {part}? (colour change when ablated)",
                                        source),
                      height=140 + 28 * len(rows), width=min(980, 260 + 70 * len(cols)),
                      yaxis=dict(autorange="reversed"), margin=dict(l=10, r=10, t=80, b=40))
    return fig

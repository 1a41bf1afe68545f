"""λ (enhancement strength) sweeps: cached results for a list of strengths, a slider over them, and
λ per region as the strength grows (paper §3.4, the conflict study of appendix C.4).

:func:`lambda_sweep` runs the final sampling and Gaussian decoding once per strength (the capture,
alignment and tokens are shared through the cache); the slider figure then switches colours only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import plotly.graph_objects as go

from . import style
from .assets import asset_colors
from .voxels import exposed_faces, rgb_strings, voxel_mesh


@dataclass
class Sweep:
    """Runs for several strengths and what the viewer needs from each.

    Attributes:
        strengths: the strengths ``s``.
        runs: one retuned run per strength.
        colors: ``[N, 3]`` asset colour per structure voxel, per run.
        lambdas: λ per region (locals, then global), per run.
    """

    strengths: List[float]
    runs: list
    colors: List[np.ndarray]
    lambdas: List[List[float]]


def lambda_sweep(run, strengths: Sequence[float], **changes) -> Sweep:
    """Retune ``run`` to each strength (plus ``changes``) and decode each asset once."""
    runs = [run.retune(strength=float(s), **changes) for s in strengths]
    return Sweep([float(s) for s in strengths], runs, [asset_colors(r) for r in runs], [r.lambdas for r in runs])


def _lambda_text(run, lambdas: Sequence[float]) -> str:
    names = [c.name for c in run.conditions]
    return ", ".join(f"{names[r]} {lam:.2f}" for r, lam in enumerate(lambdas))


def lambda_sweep_figure(sweep: Sweep, camera: tuple = (45.0, 25.0)) -> go.Figure:
    """The asset's colours for each strength, switched by a slider (works in static HTML too)."""
    first = sweep.runs[0]
    surface = exposed_faces(first.structure)
    owner = surface.triangle_voxel
    fig = go.Figure(voxel_mesh(surface, colors=sweep.colors[0], name="asset"))

    def heading(n: int) -> dict:
        return style.title(f"λ sweep — strength s = {sweep.strengths[n]:g}; λ: {_lambda_text(first, sweep.lambdas[n])}",
                           first)

    steps = [dict(label=f"{s:g}", method="update",
                  args=[{"facecolor": [rgb_strings(c)[owner]]}, {"title.text": heading(n)["text"]}, [0]])
             for n, (s, c) in enumerate(zip(sweep.strengths, sweep.colors))]
    fig.update_layout(title=heading(0), scene=style.scene(*camera), height=580,
                      margin=dict(l=0, r=0, t=80, b=0),
                      sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="strength s = "), pad=dict(t=10))])
    return fig


def lambda_curves(run, strengths: Sequence[float]) -> go.Figure:
    """λ of every region as the strength grows (reads only the λ tables: no network runs)."""
    values = np.array([run.retune(strength=float(s)).lambdas for s in strengths])
    fig = go.Figure()
    for r in range(values.shape[1]):
        cond = run.conditions[r]
        color = style.local_color(r) if r < run.K else "#555555"
        selected = len(run.selected_patches(r)) if r < run.K else len(run.global_patches)
        fig.add_trace(go.Scatter(x=list(strengths), y=values[:, r], mode="lines+markers", line=dict(color=color),
                                 name=f"{cond.name} ({'local' if r < run.K else 'global'}, {selected} patches)"))
    fig.update_layout(title=style.title(f"λ per region vs strength (mode {run.params.lambda_mode!r})", run),
                      xaxis_title="strength s", yaxis_title="λ", width=760, height=420, margin=dict(l=10, r=10, t=80, b=40))
    return fig


def runs_by_count(run, counts: Sequence[int] = None) -> dict:
    """Appendix C.5: the same run with its first ``n`` local images, for each ``n`` in ``counts``
    (default ``1..K``). Captures are shared through the cache (a local image's capture does not
    depend on the others); reverse alignment, λ and the final sampling are redone per count."""
    counts = list(range(1, run.K + 1)) if counts is None else [int(n) for n in counts]
    bad = [n for n in counts if not 1 <= n <= run.K]
    if bad:
        raise ValueError(f"counts must be in 1..{run.K}, got {bad}")
    return {n: run.fuse3d.run(run.global_condition, run.local_conditions[:n], lazy=True,
                              structure=run.user_structure, **run.params.as_dict()) for n in counts}


def count_figure(runs: dict) -> go.Figure:
    """How alignment and λ change with the number of local images (``runs_by_count``): aligned cells
    per local image, the unaligned cells and |D_g|, and λ per region, against the count."""
    from plotly.subplots import make_subplots

    counts = sorted(runs)
    last = runs[counts[-1]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cells", "λ per region"), horizontal_spacing=0.12)
    for k in range(last.K):
        xs = [n for n in counts if n > k]
        color, name = style.local_color(k), last.local_conditions[k].name
        fig.add_trace(go.Scatter(x=xs, y=[int(runs[n].refined_mask(k).sum()) for n in xs], mode="lines+markers",
                                 line=dict(color=color), name=f"{name}: aligned cells", legendgroup=name), 1, 1)
        fig.add_trace(go.Scatter(x=xs, y=[runs[n].lambdas[k] for n in xs], mode="lines+markers", showlegend=False,
                                 line=dict(color=color), legendgroup=name), 1, 2)
    fig.add_trace(go.Scatter(x=counts, y=[int(runs[n].unaligned.sum()) for n in counts], mode="lines+markers",
                             line=dict(color=style.NEUTRAL, dash="dot"), name="unaligned cells"), 1, 1)
    fig.add_trace(go.Scatter(x=counts, y=[len(runs[n].global_patches) for n in counts], mode="lines+markers",
                             line=dict(color="#555555", dash="dash"), name="|D_g| (global patches)"), 1, 1)
    if not last.params.inpainting:
        fig.add_trace(go.Scatter(x=counts, y=[runs[n].lambdas[-1] for n in counts], mode="lines+markers",
                                 line=dict(color="#555555"), name="global λ"), 1, 2)
    fig.update_xaxes(title_text="local images", dtick=1)
    fig.update_layout(title=style.title("Alignment and λ against the number of local images (appendix C.5)", last),
                      width=980, height=440, margin=dict(l=10, r=10, t=90, b=40))
    return fig

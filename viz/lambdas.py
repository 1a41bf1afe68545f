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

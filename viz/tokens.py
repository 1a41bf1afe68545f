"""Token views on the condition images: the 37×37 patch grid, foreground and selected patches
(``D_k``), the global image's reverse scores and ``D_g``, and the unified tokens with their λ.

Patch ``(i, j)`` (row ``i``, column ``j``) of the 518×518 preprocessed image is patch index
``37·i + j`` and DINOv2 token ``5 + 37·i + j`` (after CLS and 4 registers).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fuse3d.conditions import png_data_uri

from . import style

GRID = 37
PATCH = 14
SIZE = GRID * PATCH
PREFIX = 5


def patch_grid(patches: Sequence[int], values: Optional[Sequence[float]] = None, grid: int = GRID) -> np.ndarray:
    """``[grid, grid]`` float: ``values`` (default 1) at the given patch indices, NaN elsewhere."""
    idx = np.asarray(patches, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= grid * grid):
        raise ValueError(f"patch indices must be in [0, {grid * grid})")
    out = np.full(grid * grid, np.nan)
    out[idx] = 1.0 if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
    return out.reshape(grid, grid)


def image_trace(image, **kwargs) -> go.Image:
    """A picture (PIL or ``uint8`` array) as a plotly image trace, embedded as one PNG (``source``)
    rather than one number per pixel channel: a 518² crop is ~0.2 MB instead of 800 000 values, which
    widgets and notebooks otherwise serialise element by element. Pixel ``(x, y)`` sits at ``(x, y)``
    as with ``z``."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    return go.Image(source=png_data_uri(image), hoverinfo="skip", **kwargs)


def mask_grid(mask: np.ndarray) -> np.ndarray:
    """A ``[grid, grid]`` bool patch mask as a layer: 1 where set, NaN elsewhere."""
    return np.where(np.asarray(mask, bool), 1.0, np.nan)


def grid_lines(grid: int = GRID, patch: int = PATCH) -> dict:
    """One path shape drawing the patch grid over the image."""
    size = grid * patch
    path = "".join(f"M{t},0V{size}M0,{t}H{size}" for t in range(0, size + 1, patch))
    return dict(type="path", path=path, line=dict(color="rgba(255,255,255,0.25)", width=0.5), layer="above")


def _patch_ids(grid: int = GRID) -> np.ndarray:
    p = np.arange(grid * grid).reshape(grid, grid)
    return np.stack([p, p + PREFIX, p // grid, p % grid], axis=-1)


def layer_trace(values: np.ndarray, name: str, *, color: Optional[str] = None, opacity: float = 0.55,
                colorbar: Optional[dict] = None, visible: bool = True) -> go.Heatmap:
    """A semi-transparent heat map over the image, one cell per patch (NaN cells are see-through).

    ``color``: draw all set patches in one colour (a mask layer); otherwise a score colour scale 0–1.
    """
    scale = [[0, color], [1, color]] if color else style.SCORE_SCALE
    return go.Heatmap(z=values, x0=PATCH / 2, dx=PATCH, y0=PATCH / 2, dy=PATCH, name=name, opacity=opacity,
                      colorscale=scale, zmin=0, zmax=1, showscale=colorbar is not None, colorbar=colorbar,
                      customdata=_patch_ids(values.shape[0]), visible=visible, hoverongaps=False,
                      hovertemplate=("patch %{customdata[0]} (row %{customdata[2]}, col %{customdata[3]}), "
                                     "token %{customdata[1]}<br>" + name + ": %{z:.3f}<extra></extra>"))


def condition_layers(run, i: int) -> Dict[str, np.ndarray]:
    """The standard layers of condition ``i`` (``i = run.K`` is the global image): foreground and
    selected patches; for the global image also the reverse scores of its candidates and ``D_g``."""
    pr = run.prepared(i)
    selected = run.selected_patches(i).numpy()
    name = "D_k" if i < run.K else "selection"
    layers = {"foreground": mask_grid(pr.foreground), f"selected ({name}, {len(selected)})": patch_grid(selected)}
    if i == run.K:
        layers["reverse score"] = patch_grid(run.reverse_candidates.numpy(), run.reverse_scores.numpy())
        layers[f"D_g ({len(run.global_patches)})"] = patch_grid(run.global_patches.numpy())
    return layers


def _layer_color(name: str, values: np.ndarray, i: int, K: int) -> Optional[str]:
    """One colour for a mask layer (every drawn value is 1), ``None`` for a score layer."""
    drawn = values[~np.isnan(values)]
    if drawn.size and not np.all(drawn == 1):
        return None
    if name.startswith("foreground"):
        return "#ffffff"
    if name.startswith("D_g"):
        return style.HIGHLIGHT
    if name.startswith("selected"):
        return style.local_color(i) if i < K else "#2ca02c"
    return "#ffd400"


def condition_figure(run, i: int, extra: Optional[Dict[str, np.ndarray]] = None, show: Optional[str] = None,
                     size: int = 560) -> go.Figure:
    """A condition image with switchable patch layers (buttons above the image).

    Args:
        i: condition index (locals ``0..K-1``, the global image ``K``).
        extra: more layers ``name → [37, 37]`` (NaN = not drawn), e.g. ground-truth part patches.
        show: the layer shown first, by name or name prefix such as ``"reverse"`` (default: ``D_g`` for
            the global image, the selection for a local).
    """
    cond = run.conditions[i]
    standard = condition_layers(run, i)
    layers = {**standard, **(extra or {})}
    names = list(layers)
    show = show or list(standard)[-1 if i == run.K else 1]
    matches = [n for n in names if n.startswith(show)]
    if not matches:
        raise ValueError(f"no layer named {show!r}; layers: {names}")
    show = matches[0]
    fig = go.Figure(image_trace(run.prepared(i).image, name=cond.name))
    for name, values in layers.items():
        color = _layer_color(name, values, i, run.K)
        bar = dict(title="score", len=0.6) if color is None else None
        fig.add_trace(layer_trace(values, name, color=color, colorbar=bar, visible=name == show))
    buttons = [dict(label=name, method="restyle", args=[{"visible": [True] + [n == name for n in names]}])
               for name in names]
    buttons.append(dict(label="image only", method="restyle", args=[{"visible": [True] + [False] * len(names)}]))
    role = f"local {i}" if i < run.K else "global"
    fig.update_layout(
        title=style.title(f"{role}: {cond.name} — 37×37 patches (token = 5 + 37·row + col)", run),
        updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=1.0, xanchor="left",
                          yanchor="bottom", active=names.index(show), showactive=True, font=dict(size=11))],
        shapes=[grid_lines()], width=size + 120, height=size + 120, margin=dict(l=10, r=10, t=110, b=10),
        xaxis=dict(visible=False, range=[0, SIZE]), yaxis=dict(visible=False, range=[SIZE, 0], scaleanchor="x"))
    return fig


def conditions_figure(run, size: int = 300) -> go.Figure:
    """All condition images side by side, patches outside the selection dimmed (locals, then global)."""
    n = run.K + 1
    titles = [f"local {i}: {c.name}" if i < run.K else f"global: {c.name}" for i, c in enumerate(run.conditions)]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.01)
    for i in range(n):
        fig.add_trace(image_trace(run.prepared(i).image), row=1, col=i + 1)
        outside = np.ones(GRID * GRID, bool)
        outside[run.selected_patches(i).numpy()] = False
        fig.add_trace(layer_trace(mask_grid(outside.reshape(GRID, GRID)), "not selected", color="#000000", opacity=0.6),
                      row=1, col=i + 1)
    fig.update_xaxes(visible=False, range=[0, SIZE])
    fig.update_yaxes(visible=False, range=[SIZE, 0], scaleanchor="x")
    fig.update_layout(title=style.title("Condition images after preprocessing (patches outside the selection dimmed)", run),
                      width=size * n + 40, height=size + 110, margin=dict(l=10, r=10, t=90, b=10), showlegend=False)
    return fig


def region_rows(run) -> list:
    """One dict per region of the unified tokens: image, role, token count, aligned cells, λ."""
    uni, enh = run.unified_tokens, run.enhancement
    lam = enh.lambdas.tolist()
    rows = []
    for r in range(uni.num_regions):
        tokens = int((uni.token_region == r).sum())
        rows.append({"region": r, "image": run.conditions[r].name, "role": "local" if r < run.K else "global",
                     "tokens": tokens, "patches": tokens - run.prefix,
                     "cells": int(enh.cell_regions[:, r].sum()) if r < enh.cell_regions.shape[1] else 0,
                     "lambda": float(lam[r]) if r < len(lam) else 1.0})
    return rows


def enhancement_matrix(run, max_size: int = 400) -> tuple:
    """``(E [rows, cols], cell_rows, token_cols)``: the enhancement matrix with cells sorted by region
    membership, subsampled with a regular stride to at most ``max_size`` per side (a view only)."""
    enh = run.enhancement
    regions = enh.cell_regions.numpy()
    cells = np.lexsort([~regions[:, r] for r in reversed(range(regions.shape[1]))])  # region 0's cells first
    cells = cells[:: max(1, -(-len(cells) // max_size))]
    n_tokens = len(enh.token_region)
    tokens = np.arange(0, n_tokens, max(1, -(-n_tokens // max_size)))
    return enh.factors()[cells][:, tokens].numpy(), cells, tokens


def enhancement_figure(run) -> go.Figure:
    """The unified tokens per region with λ (table) and the enhancement matrix ``E`` (heat map)."""
    rows = region_rows(run)
    E, cells, tokens = enhancement_matrix(run)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.06,
                        specs=[[{"type": "table"}, {"type": "heatmap"}]],
                        subplot_titles=["unified tokens [local_1 … local_K, global]", "E (cells × tokens; 1 = unchanged)"])
    cols = ["region", "image", "role", "tokens", "cells", "lambda"]
    fig.add_trace(go.Table(header=dict(values=["region", "image", "role", "tokens (5 + patches)", "aligned cells", "λ"]),
                           cells=dict(values=[[f"{r[c]:.3f}" if c == "lambda" else r[c] for r in rows] for c in cols])),
                  row=1, col=1)
    region = run.enhancement.token_region.numpy()[tokens]
    fig.add_trace(go.Heatmap(z=E, colorscale="Reds", zmin=1, colorbar=dict(title="E", len=0.8), customdata=np.broadcast_to(
        region[None, :], E.shape), hovertemplate="token region %{customdata}<br>E = %{z:.3f}<extra></extra>"),
        row=1, col=2)
    fig.update_xaxes(title_text="unified token (region order)", showticklabels=False, row=1, col=2)
    fig.update_yaxes(title_text="cell (sorted by region)", showticklabels=False, autorange="reversed", row=1, col=2)
    fig.update_layout(title=style.title("Local attention enhancement: λ per region", run), width=1100, height=480,
                      margin=dict(l=10, r=10, t=90, b=40))
    return fig

"""Attention and alignment views in 3D: per-head small multiples, forward scores, raw vs refined
masks, aligned regions per local image, and where the global image's tokens attend.

Attention is computed on *cells* (the latent flow's 32³ queries), so score views draw cells;
masks are drawn on the structure's 64³ voxels (a voxel follows its cell).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import style
from .voxels import VoxelSurface, exposed_faces, small_multiples, voxel_mesh

CELL_RESOLUTION = 32
VOXEL_RESOLUTION = 64
#: Codes of :func:`mask_changes`, in order.
CHANGES = ("outside", "kept", "added", "removed")


def cell_surface(run) -> VoxelSurface:
    """Exposed faces of the run's cells (32³)."""
    return exposed_faces(run.cells)


def voxel_surface(run) -> VoxelSurface:
    """Exposed faces of the run's structure (64³ voxels)."""
    return exposed_faces(run.structure)


def minmax_rows(x: np.ndarray) -> np.ndarray:
    """Min–max normalise each row to ``[0, 1]`` (a constant row becomes zeros)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (x - lo) / span, 0.0)


def head_values(run, k: int, block: Optional[int] = None, step: Optional[int] = None) -> np.ndarray:
    """``[heads, cells]`` scores of local ``k``: the mean over blocks and steps, or one block / one step."""
    if block is not None and step is not None:
        raise ValueError("drill down into a block or a step, not both (per-block maps average over steps)")
    if block is not None:
        return run.block_scores(k)[block].float().numpy()
    if step is not None:
        return run.step_scores(k)[step].float().numpy()
    return run.head_scores(k).float().numpy()


def _drill_label(block: Optional[int], step: Optional[int]) -> str:
    if block is not None:
        return f"block {block} (mean over steps)"
    if step is not None:
        return f"step {step} (mean over blocks)"
    return "mean over blocks and steps"


def head_grid(run, k: int, *, block: Optional[int] = None, step: Optional[int] = None,
              heads: Optional[Sequence[int]] = None, cols: int = 4, normalize: str = "head",
              camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Small multiples: local ``k``'s attention on the cells, one tile per head, all in **one** 3D
    scene (a page keeps only about 16 WebGL contexts; a scene per head would use them up).

    Every tile shows the cells from ``camera = (yaw, pitch)``; dragging pans the board.

    Args:
        k: local condition index.
        block, step: show one block (mean over steps) or one sampler step (mean over blocks).
        heads: which heads to draw (default: all); the run's chosen heads are starred and red.
        cols: tiles per row.
        normalize: ``"head"`` (each head min–max on its own, as alignment does) or ``"shared"``
            (one scale for all heads, to compare their magnitudes).
    """
    if normalize not in ("head", "shared"):
        raise ValueError(f"normalize must be 'head' or 'shared', got {normalize!r}")
    values = head_values(run, k, block, step)
    heads = list(range(values.shape[0])) if heads is None else [int(h) for h in heads]
    shown = values[heads]
    shown = minmax_rows(shown) if normalize == "head" else minmax_rows(shown.reshape(1, -1)).reshape(shown.shape)
    chosen = set(run.params.heads)
    surface = cell_surface(run)

    def tile(n, h):
        bar = dict(title="score", len=0.5, thickness=14) if n == 0 else None
        return lambda place: voxel_mesh(surface, values=shown[n], resolution=CELL_RESOLUTION, name=f"head {h}", cmin=0,
                                        cmax=1, colorbar=bar, hover="score", placement=place)

    fig, rows = small_multiples({f"head {h}": tile(n, h) for n, h in enumerate(heads)}, cols, camera,
                                highlight=[f"head {h}" for h in chosen])
    name = run.local_conditions[k].name
    fig.update_layout(title=style.title(f"Attention of {name}'s selected tokens per head — {_drill_label(block, step)}"
                                        f" — ★ = chosen heads {sorted(chosen)} (0-based)"
                                        f"<br><sup>{style.defaults_label(run)}</sup>", run),
                      height=min(230 * rows + 110, 1100), width=980, margin=dict(l=0, r=0, t=110, b=0))
    return fig


def score_figure(run, k: int, camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Local ``k``'s forward score (mean of the chosen heads, min–max) on the cells."""
    p = run.params
    score = run.forward_scores(k).numpy()
    bar = dict(title=f"score<br>(> {p.threshold:g}<br>is aligned)", len=0.7,
               tickvals=[0, p.threshold, 1], ticktext=["0", f"{p.threshold:g}", "1"])
    mesh = voxel_mesh(cell_surface(run), values=score, resolution=CELL_RESOLUTION, name="forward score", cmin=0,
                      cmax=1, colorbar=bar, hover="score")
    fig = go.Figure(mesh)
    fig.update_layout(title=style.title(f"Forward score of {run.local_conditions[k].name} (heads {list(p.heads)})", run),
                      scene=style.scene(*camera), height=520, margin=dict(l=0, r=0, t=70, b=0))
    return fig


def mask_changes(raw: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """Per item: 0 outside both, 1 kept (in both), 2 added by refinement, 3 removed by it (see :data:`CHANGES`)."""
    raw, refined = np.asarray(raw, bool), np.asarray(refined, bool)
    out = np.zeros(raw.shape, np.int8)
    out[raw & refined] = 1
    out[~raw & refined] = 2
    out[raw & ~refined] = 3
    return out


def change_traces(surface: VoxelSurface, voxel_classes: np.ndarray, *, group: str = "",
                  showlegend: bool = True) -> list:
    """One ``Mesh3d`` per class of :func:`mask_changes` (legend entries toggle them), on 64³ voxels."""
    traces = []
    face_class = voxel_classes[surface.face_voxel]
    for code, name in enumerate(CHANGES):
        mesh = voxel_mesh(surface, faces=face_class == code, colors=style.CHANGE_COLORS[name], name=name)
        mesh.update(legendgroup=name, showlegend=showlegend)
        traces.append(mesh)
    return traces


def _changes_on_voxels(run, k: int) -> np.ndarray:
    return mask_changes(run.raw_mask(k).numpy(), run.refined_mask(k).numpy())[run.voxel_cell.numpy()]


def refinement_figure(run, ks: Optional[Sequence[int]] = None, camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Raw (thresholded) vs refined (kNN vote) masks per local image: kept, added and removed voxels."""
    ks = list(range(run.K)) if ks is None else list(ks)
    titles = []
    for k in ks:
        raw, ref = run.raw_mask(k).numpy(), run.refined_mask(k).numpy()
        titles.append(f"{run.local_conditions[k].name}: {int(raw.sum())} → {int(ref.sum())} cells "
                      f"(+{int((ref & ~raw).sum())} / −{int((raw & ~ref).sum())})")
    fig = make_subplots(rows=1, cols=len(ks), specs=style.subplot_specs(1, len(ks)), subplot_titles=titles,
                        horizontal_spacing=0.01)
    surface = voxel_surface(run)
    for n, k in enumerate(ks):
        for trace in change_traces(surface, _changes_on_voxels(run, k), showlegend=n == 0):
            fig.add_trace(trace, row=1, col=n + 1)
    p = run.params
    fig.update_scenes(**style.scene(*camera))
    fig.update_layout(title=style.title(f"Forward alignment: raw (threshold {p.threshold:g}, heads {list(p.heads)}) "
                                        f"vs refined (kNN vote, k={p.refine_k})", run),
                      height=480, width=max(520, 420 * len(ks)), legend=dict(orientation="h", y=-0.02),
                      margin=dict(l=0, r=0, t=90, b=30))
    return fig


def alignment_labels(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per item: ``-1`` in no mask, ``k`` in mask ``k`` only, ``len(masks)`` in several."""
    m = np.stack([np.asarray(x, bool) for x in masks])
    out = np.where(m.any(0), m.argmax(0), -1)
    out[m.sum(0) > 1] = len(masks)
    return out


def _label_colors(labels: np.ndarray, K: int) -> np.ndarray:
    palette = np.array([style.local_color(k) for k in range(K)] + [style.OVERLAP, style.NEUTRAL])
    return palette[np.where(labels < 0, K + 1, labels)]


def alignment_figure(run, truth: Optional[Sequence[np.ndarray]] = None, part_names: Optional[Sequence[str]] = None,
                     refined: bool = True, camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Each local image's aligned region on the structure (one colour per local, unaligned grey).

    Args:
        truth: optional ``[N]`` bool per local: the ground-truth part voxels, drawn in a second scene.
        part_names: names of those parts (for the legend).
        refined: show refined masks (default) or raw thresholded ones.
    """
    masks = [run.aligned_voxels(k, refined=refined).numpy() for k in range(run.K)]
    labels = alignment_labels(masks)
    cols = 1 if truth is None else 2
    titles = [f"aligned ({'refined' if refined else 'raw'})"] + (["ground-truth parts"] if truth is not None else [])
    fig = make_subplots(rows=1, cols=cols, specs=style.subplot_specs(1, cols), subplot_titles=titles,
                        horizontal_spacing=0.01)
    surface = voxel_surface(run)
    fig.add_trace(voxel_mesh(surface, colors=_label_colors(labels, run.K), name="aligned"), row=1, col=1)
    if truth is not None:
        fig.add_trace(voxel_mesh(surface, colors=_label_colors(alignment_labels(truth), run.K), name="truth"), row=1, col=2)
    for k, cond in enumerate(run.local_conditions):
        part = f" → {part_names[k]}" if part_names else ""
        fig.add_trace(style.legend_entry(f"{cond.name}{part} ({int(masks[k].sum())} voxels)", style.local_color(k)))
    fig.add_trace(style.legend_entry(f"unaligned ({int((labels < 0).sum())} voxels)", style.NEUTRAL))
    if (labels == run.K).any():
        fig.add_trace(style.legend_entry("several locals", style.OVERLAP))
    fig.update_scenes(**style.scene(*camera))
    fig.update_layout(title=style.title("Aligned regions of the local images on the structure", run),
                      height=500, width=520 * cols, legend=dict(orientation="h", y=-0.02), margin=dict(l=0, r=0, t=80, b=30))
    return fig


def reverse_attention(run, patches: Optional[Sequence[int]] = None) -> np.ndarray:
    """``[cells]``: how much each cell attends to the global image's patches ``patches`` (default
    ``D_g``), from the reverse capture (softmax over cells), mean over the chosen heads."""
    cand = run.reverse_candidates.numpy()
    wanted = run.global_patches.numpy() if patches is None else np.asarray(patches)
    cols = np.flatnonzero(np.isin(cand, wanted))
    if len(cols) == 0:
        raise ValueError("none of those patches is a reverse-alignment candidate (the global image's selection)")
    heads = list(run.params.heads)
    return run.reverse_map[heads][:, :, cols].float().mean(0).sum(-1).numpy()


def reverse_figure(run, patches: Optional[Sequence[int]] = None, camera: tuple = (45.0, 25.0)) -> go.Figure:
    """Cells' attention to the global image's patches (default ``D_g``), unaligned cells outlined in
    a second scene: reverse alignment keeps the tokens that the unaligned cells attend to."""
    values = minmax_rows(reverse_attention(run, patches)[None])[0]
    surface = cell_surface(run)
    what = "D_g" if patches is None else f"{len(patches)} chosen patch(es)"
    fig = make_subplots(rows=1, cols=2, specs=style.subplot_specs(1, 2), horizontal_spacing=0.01,
                        subplot_titles=[f"attention to {what} (min–max)", f"unaligned cells ({int(run.unaligned.sum())})"])
    fig.add_trace(voxel_mesh(surface, values=values, resolution=CELL_RESOLUTION, name="reverse attention", cmin=0, cmax=1,
                             colorbar=dict(title="score", len=0.6, x=0.48), hover="score"), row=1, col=1)
    unaligned = np.where(run.unaligned.numpy(), style.HIGHLIGHT, style.NEUTRAL)
    fig.add_trace(voxel_mesh(surface, colors=unaligned, resolution=CELL_RESOLUTION, name="unaligned"), row=1, col=2)
    fig.update_scenes(**style.scene(*camera))
    fig.update_layout(title=style.title("Reverse alignment: where the global image's tokens attend", run),
                      height=480, width=1000, margin=dict(l=0, r=0, t=80, b=0), showlegend=False)
    return fig

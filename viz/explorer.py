"""A linked 2D ↔ 3D attention explorer (:func:`explore`): what a cell looks at in every image, and
which cells look at chosen patches.

* **3D → 2D.** Click a cell of the structure: every condition image shows that cell's attention over
  its 37×37 patches (its row, normalised over the image's tokens), for the chosen heads, block and step.
* **2D → 3D.** Box- or lasso-select patches on an image: the 3D view shows how much every cell
  attends to them (summed over the patches, min–max over cells).

Both come from :mod:`fuse3d.explore`: the capture samplings run again with a processor that keeps only
the rows or columns asked for, cached like every stage, so asking twice costs nothing. One WebGL
scene (the 3D view); the images are plain 2D figures.
"""
from __future__ import annotations

import html
from typing import List, Optional, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from fuse3d.explore import GRID, cell_attention, patch_attention

from . import style
from .attention import CELL_RESOLUTION, cell_surface, minmax_rows
from .tokens import PATCH, image_trace
from .voxels import voxel_mesh


class Explorer:
    """The explorer's widgets and state (see the module docstring); :func:`explore` makes one.

    Attributes:
        scene: the 3D ``FigureWidget`` (the run's cells); images: one ``FigureWidget`` per condition
            (locals, then the global image); heads, block, step: the controls; status: a text line.
        cell: the cell shown in the images (``None`` before the first click); patches: the
            ``(condition, [patches])`` shown in 3D.
    """

    def __init__(self, run, image_size: int = 250):
        self.run = run
        self.surface = cell_surface(run)
        self.cell: Optional[int] = None
        self.patches: Optional[tuple] = None
        H, B = run.num_heads, run.num_blocks
        steps = run.trellis.slat_sampler_params.get("steps", 0) if run.params.latent_steps is None else run.params.latent_steps
        self.heads = W.SelectMultiple(options=[(f"head {h}", h) for h in range(H)], value=tuple(range(H)),
                                      rows=min(H, 8), description="heads")
        self.block = W.Dropdown(options=[("all blocks", None)] + [(f"block {b}", b) for b in range(B)], description="block")
        self.step = W.Dropdown(options=[("all steps", None)] + [(f"step {s}", s) for s in range(int(steps))],
                               description="step")
        self.status = W.HTML("Click a cell in 3D, or box-select patches on an image.")
        self.scene = go.FigureWidget(voxel_mesh(self.surface, values=np.zeros(len(run.cells)), resolution=CELL_RESOLUTION,
                                                name="cells", cmin=0, cmax=1, hover="attention",
                                                colorbar=dict(title="attention", len=0.6)))
        self.scene.update_layout(title=style.title("Cells: click one; or select patches on an image", run),
                                 scene=style.scene(), height=460, width=520, margin=dict(l=0, r=0, t=70, b=0))
        self.scene.data[0].on_click(self._on_cell_click)
        self.images = [self._image_figure(i, image_size) for i in range(run.K + 1)]
        for control in (self.heads, self.block, self.step):
            control.observe(lambda _: self.redraw(), names="value")
        titles = [W.HTML(f"<b>{html.escape(self._name(i))}</b>") for i in range(run.K + 1)]
        gallery = W.HBox([W.VBox([t, f]) for t, f in zip(titles, self.images)], layout=W.Layout(flex_flow="row wrap"))
        self.widget = W.VBox([W.HBox([self.heads, W.VBox([self.block, self.step])]), W.HBox([self.scene, gallery]),
                              self.status])

    # ------------------------------------------------------------------ figures
    def _name(self, i: int) -> str:
        return f"global: {self.run.global_condition.name}" if i == self.run.K else f"local {i}: {self.run.local_conditions[i].name}"

    def _image_figure(self, i: int, size: int) -> go.FigureWidget:
        centres = (np.arange(GRID) + 0.5) * PATCH
        xs, ys = np.meshgrid(centres, centres)
        fig = go.FigureWidget([
            image_trace(self.run.prepared(i).image),
            go.Heatmap(z=np.zeros((GRID, GRID)), x=centres, y=centres, zmin=0, zmax=1, opacity=0.6,
                       colorscale=style.SCORE_SCALE, showscale=False, hovertemplate="patch attention %{z:.3f}<extra></extra>"),
            go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", marker=dict(size=4, opacity=0.0),
                       customdata=np.arange(GRID * GRID), hoverinfo="skip", name="patches"),
        ])
        fig.update_layout(width=size, height=size, margin=dict(l=0, r=0, t=0, b=0), dragmode="select",
                          xaxis=dict(visible=False, range=[0, 518]), yaxis=dict(visible=False, range=[518, 0], scaleanchor="x"),
                          showlegend=False)
        fig.data[2].on_selection(lambda trace, points, selector, i=i: self.select_patches(i, points.point_inds))
        return fig

    # ------------------------------------------------------------------ interaction
    def _on_cell_click(self, trace, points, selector) -> None:
        if points.point_inds:
            self.select_cell(int(self.surface.triangle_voxel[points.point_inds[0]]))

    @property
    def chosen_heads(self) -> List[int]:
        return list(self.heads.value) or list(range(self.run.num_heads))

    def select_cell(self, cell: int) -> List[np.ndarray]:
        """Show ``cell``'s attention in every image; returns the ``[37, 37]`` maps drawn."""
        self.cell = int(cell)
        att = cell_attention(self.run, [self.cell], self._blocks(), self._steps())
        maps = att.patch_maps(self.chosen_heads)
        for fig, m in zip(self.images, maps):
            fig.data[1].z = m / m.max() if m.max() > 0 else m
        best = [int(np.argmax(m)) for m in maps]
        self.status.value = (f"cell {self.cell}: strongest patch per image "
                             + ", ".join(f"{i}: {b} (row {b // GRID}, col {b % GRID})" for i, b in enumerate(best))
                             + f" — heads {self.chosen_heads}, {self.block.label}, {self.step.label}")
        return maps

    def select_patches(self, condition: int, patches: Sequence[int]) -> Optional[np.ndarray]:
        """Show in 3D how much every cell attends to ``patches`` of ``condition``; returns the values drawn."""
        patches = sorted({int(p) for p in patches})
        if not patches:
            return None
        self.patches = (int(condition), patches)
        scores = patch_attention(self.run, condition, patches, self._blocks(), self._steps())
        values = minmax_rows(scores[self.chosen_heads].mean(0).numpy()[None])[0]
        self.scene.data[0].intensity = values[self.surface.triangle_voxel]
        self.status.value = (f"{len(patches)} patch(es) of {html.escape(self._name(condition))}: attention of every "
                             f"cell (min–max), heads {self.chosen_heads}, {self.block.label}, {self.step.label}")
        return values

    def redraw(self) -> None:
        """Redraw both sides for the current controls."""
        if self.cell is not None:
            self.select_cell(self.cell)
        if self.patches is not None:
            self.select_patches(*self.patches)

    def _blocks(self):
        return None if self.block.value is None else [self.block.value]

    def _steps(self):
        return None if self.step.value is None else [self.step.value]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def explore(run, cell: Optional[int] = None, image_size: int = 250) -> Explorer:
    """The linked explorer of a run (display it as a cell's value); ``cell`` is shown at once."""
    ex = Explorer(run, image_size)
    if cell is not None:
        ex.select_cell(cell)
    return ex

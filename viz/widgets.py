"""Interactive tuning in Jupyter (ipywidgets): pick heads, threshold and refinement and see the
raw vs refined alignment redraw at once.

Every redraw is ``run.retune(...)`` followed by reading the masks: the capture is cached, so no
network runs; the figure is a ``FigureWidget`` whose traces are updated in place.
"""
from __future__ import annotations

import html

import time
from typing import List, Optional, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from . import style
from .attention import change_traces, mask_changes, voxel_surface
from .metrics import iou


class HeadTuner:
    """Checkboxes for the heads, a threshold slider and a refine toggle over one local image's
    raw/refined masks (kept, added, removed voxels).

    Args:
        run: a run whose capture is computed (or will be, once, on first draw).
        k: the local condition shown first (a drop-down switches between locals).
        truth: optional per-local ``[N]`` bool ground-truth voxels; the status line then shows IoU.

    Attributes:
        heads: the 16 (``run.num_heads``) head checkboxes; threshold, refine, local: the other controls.
        figure: the ``go.FigureWidget``; status: the text under it; tuned: the run of the last redraw.
        last_redraw_s: seconds the last redraw took.
    """

    def __init__(self, run, k: int = 0, truth: Optional[Sequence[np.ndarray]] = None):
        self.run = run
        self.truth = truth
        self.surface = voxel_surface(run)
        chosen = set(run.params.heads)
        self.heads = [W.Checkbox(value=h in chosen, description=f"head {h}", indent=False,
                                 layout=W.Layout(width="88px")) for h in range(run.num_heads)]
        self.threshold = W.FloatSlider(value=run.params.threshold, min=0.0, max=1.0, step=0.01, description="threshold",
                                       continuous_update=False, readout_format=".2f")
        self.refine = W.Checkbox(value=run.params.refine, description="kNN refine", indent=False)
        self.local = W.Dropdown(options=[(c.name, i) for i, c in enumerate(run.local_conditions)], value=k,
                                description="local")
        self.status = W.HTML()
        self.defaults = W.HTML(f"<small>{html.escape(style.defaults_label(run))}</small>")
        self.figure = go.FigureWidget(change_traces(self.surface, np.zeros(len(run.structure), np.int8)))
        self.figure.update_layout(title=style.title("Head / threshold tuner: raw vs refined alignment", run),
                                  scene=style.scene(), height=520, margin=dict(l=0, r=0, t=70, b=0),
                                  legend=dict(orientation="h", y=-0.02))
        self.tuned = run
        self.last_redraw_s = 0.0
        self._muted = False
        for control in [*self.heads, self.threshold, self.refine, self.local]:
            control.observe(self._on_change, names="value")
        self.redraw()
        cols = 8 if run.num_heads > 8 else run.num_heads
        self.widget = W.VBox([W.HBox([self.local, self.threshold, self.refine]),
                              W.GridBox(self.heads, layout=W.Layout(grid_template_columns=f"repeat({cols}, 92px)")),
                              self.figure, self.status, self.defaults])

    @property
    def selected_heads(self) -> List[int]:
        return [h for h, box in enumerate(self.heads) if box.value]

    def set(self, heads: Optional[Sequence[int]] = None, threshold: Optional[float] = None,
            refine: Optional[bool] = None, k: Optional[int] = None) -> None:
        """Change several controls and redraw once."""
        self._muted = True
        try:
            if heads is not None:
                for h, box in enumerate(self.heads):
                    box.value = h in set(heads)
            if threshold is not None:
                self.threshold.value = threshold
            if refine is not None:
                self.refine.value = refine
            if k is not None:
                self.local.value = k
        finally:
            self._muted = False
        self.redraw()

    def _on_change(self, _change) -> None:
        if not self._muted:
            self.redraw()

    def redraw(self) -> None:
        """Retune from the cache and update the figure in place (no network runs)."""
        start = time.perf_counter()
        heads = self.selected_heads
        if not heads:
            self.status.value = "<b>select at least one head</b>"
            return
        k = self.local.value
        self.tuned = self.run.retune(heads=heads, threshold=self.threshold.value, refine=self.refine.value)
        raw, ref = self.tuned.raw_mask(k).numpy(), self.tuned.refined_mask(k).numpy()
        classes = mask_changes(raw, ref)[self.run.voxel_cell.numpy()]
        face_class = classes[self.surface.face_voxel]
        with self.figure.batch_update():
            for code, trace in enumerate(self.figure.data):
                tri = self.surface.triangles[np.repeat(face_class == code, 2)]
                trace.i, trace.j, trace.k = tri[:, 0], tri[:, 1], tri[:, 2]
        self.last_redraw_s = time.perf_counter() - start
        self.status.value = self._status(k, raw, ref)

    def _status(self, k: int, raw: np.ndarray, ref: np.ndarray) -> str:
        text = (f"{self.run.local_conditions[k].name}: heads {self.selected_heads}, threshold {self.threshold.value:.2f} "
                f"→ raw {int(raw.sum())} cells, refined {int(ref.sum())} (+{int((ref & ~raw).sum())} "
                f"/ −{int((raw & ~ref).sum())}); redraw {self.last_redraw_s * 1000:.0f} ms")
        if self.truth is not None:
            text += f"; IoU vs true part {iou(self.tuned.aligned_voxels(k).numpy(), self.truth[k]):.3f}"
        return text + f"<br><small>{style.model_label(self.run)}</small>"

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

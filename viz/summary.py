"""A rich HTML summary of a run for notebooks: the model, thumbnails of the condition images with
their selected patches tinted, the parameters that differ from the defaults, and the stage table."""
from __future__ import annotations

import html

import numpy as np

from fuse3d import Fuse3DParams
from fuse3d.conditions import png_data_uri

from . import style
from .tokens import PATCH


def dimmed(image: np.ndarray, selected: np.ndarray, keep: float = 0.35) -> np.ndarray:
    """``[S, S, 3]`` image with the patches outside the ``[g, g]`` selection darkened to ``keep``."""
    mask = np.kron(np.asarray(selected, bool), np.ones((PATCH, PATCH), bool))[..., None]
    return np.where(mask, image, keep * np.asarray(image, np.float32)).round().astype(np.uint8)


class RunSummary:
    """Displays as HTML in Jupyter (``_repr_html_``)."""

    def __init__(self, run, thumb: int = 150):
        self.run = run
        self.thumb = thumb

    def _thumbnails(self) -> str:
        cells = []
        for i, cond in enumerate(self.run.conditions):
            pr = self.run.prepared(i)
            img = dimmed(np.asarray(pr.image), pr.selected)
            role = f"local {i}" if i < self.run.K else "global"
            cells.append(f'<figure style="display:inline-block;margin:4px;text-align:center">'
                         f'<img src="{png_data_uri(img, self.thumb)}" width="{self.thumb}" alt="{html.escape(cond.name)}">'
                         f"<figcaption>{role}: {html.escape(cond.name)}<br>{int(pr.selected.sum())} patches</figcaption>"
                         f"</figure>")
        return "".join(cells)

    def _changed_params(self) -> str:
        defaults = Fuse3DParams.for_model(self.run.fuse3d.defaults).as_dict()
        changed = {k: v for k, v in self.run.params.as_dict().items() if defaults[k] != v}
        line = f"<small>{html.escape(style.defaults_label(self.run))}</small><br>"
        if not changed:
            return line + "all parameters at their defaults"
        return line + "parameters: " + ", ".join(f"<code>{k}={html.escape(repr(v))}</code>" for k, v in changed.items())

    def _repr_html_(self) -> str:
        return (f"<div><b>{html.escape(style.model_label(self.run))}</b><br>{self._thumbnails()}<br>"
                f"{self._changed_params()}<br>{self.run._repr_html_()}</div>")


def summary(run, thumb: int = 150) -> RunSummary:
    """A run's summary with condition thumbnails (display it as a cell's value)."""
    return RunSummary(run, thumb)

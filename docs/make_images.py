"""Regenerate ``docs/<notebook>.png``: run each notebook and save the output of its cell tagged
``docs-figure`` (plotly figures through headless Chromium, images as they are).

Usage: ``python docs/make_images.py [notebooks/01_walkthrough.ipynb ...]`` (default: all notebooks).

A widget (the explorer of ``07_explore``) lives only in a browser: its picture comes from running the
notebook in JupyterLab, ``python -m viz.lab notebooks/07_explore.ipynb --out out/lab``, whose
``07_explore-widget-NN.png`` screenshots are copied to ``docs/`` (``07_explore.png`` is the explorer,
``painter.png`` the region painter).
"""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import nbformat
import plotly.graph_objects as go
from nbclient import NotebookClient

from viz.browser import figure_screenshot

ROOT = Path(__file__).resolve().parent.parent
TAG = "docs-figure"
PLOTLY = "application/vnd.plotly.v1+json"
WIDGET = "application/vnd.jupyter.widget-view+json"


def docs_output(path: Path) -> dict:
    """Execute a notebook and return the display data of its ``docs-figure`` cell."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        if TAG in cell.get("metadata", {}).get("tags", []):
            for out in cell.outputs:  # skip progress bars and text
                if set(out.get("data", {})) & {PLOTLY, "image/png", WIDGET}:
                    return out["data"]
    raise LookupError(f"{path.name}: no output in a cell tagged {TAG!r}")


def save(data: dict, target: Path) -> None:
    if PLOTLY in data:
        figure_screenshot(go.Figure(data[PLOTLY]), target)
    elif "image/png" in data:
        target.write_bytes(base64.b64decode(data["image/png"]))
    elif WIDGET in data:
        print(f"{target.name}: a widget, drawn only in a browser: take it from python -m viz.lab (see the docstring)")
    else:
        raise ValueError(f"cannot save output types {sorted(data)} as {target.name}")


def main(paths) -> None:
    for path in paths or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        path = Path(path).resolve()
        target = ROOT / "docs" / f"{path.stem}.png"
        data = docs_output(path)
        save(data, target)
        if WIDGET not in data:
            print("wrote", target.relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])

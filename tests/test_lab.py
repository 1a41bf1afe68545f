"""Every notebook as a person meets it: Run All in a real JupyterLab, driven by Playwright in Debian's
chromium (viz.lab).

For each notebook: no error output, no widget that failed to display, no uncaught page error, every
plotly figure and widget drew something (pixels of an element screenshot), and the page holds at
most ``WEBGL_BUDGET`` live WebGL contexts with every cell kept in the page. Marked ``lab``: the
README's test command runs these after nbval, so the runs come from the cache nbval warmed. The
screenshots and a summary (run time, figures, widgets, WebGL contexts per notebook) are kept under
``out/lab/`` as test artefacts. Needs ``chromium`` (the test command installs Debian's); without it
these tests fail, they are never skipped.
"""
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from viz.lab import VIEWPORT, WEBGL_BUDGET, lab_browser, lab_server, open_notebook, run_cell, run_notebook

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
ARTEFACTS = ROOT / "out" / "lab"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")  # copies: a run never touches the repository's notebooks
    for path in NOTEBOOKS:
        shutil.copy(path, root)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('before')"),
                                                   nbformat.v4.new_code_cell("raise ValueError('boom')")]),
                   root / "broken.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PAINTER_SETUP),
                                                   nbformat.v4.new_code_cell(PAINTER_READ)]), root / "painter.ipynb")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with lab_server(root) as url, lab_browser(url) as browser:
        yield url, browser


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws_in_jupyterlab(lab, path):
    url, browser = lab
    page = browser.new_page(viewport=VIEWPORT)
    try:
        report = run_notebook(page, url, path.name, ARTEFACTS)
    finally:
        page.close()
    summary = ARTEFACTS / "summary.json"
    table = json.loads(summary.read_text()) if summary.is_file() else {}
    table[path.stem] = {"seconds": round(report.seconds, 1), "cells": report.cells, "webgl_contexts": report.webgl_contexts,
                        "figures": sum(d.kind == "plotly" for d in report.drawn),
                        "widgets": sum(d.kind == "widget" for d in report.drawn)}
    summary.write_text(json.dumps(table, indent=1))
    print(report.summary())
    assert report.errors == [], report.errors
    assert report.widget_failures == [], report.widget_failures
    assert report.page_errors == [], report.page_errors
    assert report.drawn and not report.blank, [f"{d.kind} {d.index}: {d.colours} colours" for d in report.blank]
    assert report.webgl_contexts <= WEBGL_BUDGET


def test_the_driver_sees_an_error_output(lab):
    """What the checks above rest on: a failing cell is reported, and the run stops there."""
    url, browser = lab
    page = browser.new_page()
    try:
        report = run_notebook(page, url, "broken.ipynb")
    finally:
        page.close()
    assert report.errors == ["ValueError: boom"] and not report.ok


PAINTER_SETUP = """import numpy as np, viz
from PIL import Image
image = np.zeros((600, 600, 3), np.uint8)
image[40:560, 40:560] = (90, 160, 220)  # an object on black: its crop fills the middle of the 518² frame
painter = viz.paint(Image.fromarray(image), background="black", brush=20)
painter"""
PAINTER_READ = """selected = painter.condition().prepare().selected
print("python", sorted(np.flatnonzero(selected).tolist()))
print("widget", painter.selected_patches)"""


def test_the_region_painter_paints_erases_and_boxes_patches(lab):
    """Strokes drawn with the mouse on the painter select the patches under them, in the widget's
    count and in the Condition it returns alike."""
    import re

    import numpy as np

    url, browser = lab
    page = browser.new_page(viewport=VIEWPORT)
    try:
        open_notebook(page, url, "painter.ipynb")
        run_cell(page, 0)
        canvas = page.locator(".fuse3d-painter-cursor")
        canvas.wait_for(timeout=60000)
        page.locator(".fuse3d-painter-bar button[data-tool=brush]").click()
        box = canvas.bounding_box()
        scale = box["width"] / 518

        def drag(points):
            page.mouse.move(box["x"] + points[0][0] * scale, box["y"] + points[0][1] * scale)
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=8)
            page.mouse.up()

        drag([(140, 196), (340, 196)])  # brush 20 px: rows 13–14 of the grid (pixels 186–206), columns 9–25
        page.locator(".fuse3d-painter-bar button[data-tool=eraser]").click()
        drag([(245, 170), (245, 240)])  # erases a gap at columns 16–18
        page.locator(".fuse3d-painter-bar button[data-tool=box]").click()
        drag([(120, 300), (160, 330)])  # a box: rows 21–23, columns 8–11
        page.wait_for_timeout(500)
        count = int(re.search(r"(\d+) patches selected", page.locator(".fuse3d-painter-count").inner_text()).group(1))
        run_cell(page, 1)
        out = page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".jp-OutputArea-output").inner_text()
        page.screenshot(path=str(ARTEFACTS / "painter.png"))
    finally:
        page.close()
    python = [int(v) for v in re.search(r"python \[([\d, ]*)\]", out).group(1).split(",") if v.strip()]
    widget = int(re.search(r"widget (\d+)", out).group(1))
    rows, cols = np.divmod(np.array(python), 37)
    stroke = set(zip(rows[rows < 20].tolist(), cols[rows < 20].tolist()))
    boxed = set(zip(rows[rows >= 20].tolist(), cols[rows >= 20].tolist()))
    assert widget == count == len(python)
    assert {(r, c) for r in (13, 14) for c in range(11, 15)} <= stroke  # painted left of the gap
    assert {(r, c) for r in (13, 14) for c in range(20, 24)} <= stroke  # and right of it
    assert not any(c == 17 for _, c in stroke)  # the eraser's path (pixels 235–255) is clear
    assert boxed == {(r, c) for r in range(21, 24) for c in range(8, 12)}
    assert {r for r, _ in stroke} == {13, 14}

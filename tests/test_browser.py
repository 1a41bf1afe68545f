"""Real-browser check: exported figures render in headless Chromium (WebGL via SwiftShader).

Needs Debian's ``chromium`` (``apt-get install -y chromium``); without it these tests fail, they are
never skipped.
"""
import re

import numpy as np
import pytest
from PIL import Image

from fuse3d import Fuse3D
from viz import browser, head_grid, load_example, voxel_figure

BLOCK = np.array([[x, y, z] for x in range(8) for y in range(8) for z in range(4)])


def test_chromium_is_installed():
    assert browser.find_chromium()  # raises BrowserError("... apt-get install -y chromium") otherwise


def colour_stats(png):
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    saturated = (a.max(-1) - a.min(-1)) > 40
    return saturated.mean(), len(np.unique(a.reshape(-1, 3), axis=0))


def test_3d_figure_renders_and_is_not_blank(tmp_path):
    fig = voxel_figure(BLOCK, values=BLOCK[:, 0] / 7.0, title="browser test")
    html = browser.write_probe_html(fig, tmp_path / "fig.html")
    text = html.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", text)  # plotly.js embedded: the page loads no script
    assert browser.render_status(html) == "rendered 1 scene(s)"
    png = browser.screenshot(html, tmp_path / "fig.png", (800, 600))
    saturated, colours = colour_stats(png)
    assert saturated > 0.03 and colours > 200, (saturated, colours)


def test_javascript_errors_are_reported(tmp_path):
    html = browser.write_probe_html(voxel_figure(BLOCK), tmp_path / "bad.html")
    html.write_text(html.read_text().replace("</body>", "<script>undefinedFunction();</script></body>"))
    assert browser.render_status(html).startswith("error: ")


def test_2d_figure_status(tmp_path):
    import plotly.graph_objects as go

    html = browser.write_probe_html(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])), tmp_path / "2d.html")
    assert browser.render_status(html) == "rendered 2D"


def test_sixteen_heads_render_as_tiles_of_one_scene(tmp_path, tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    run = load_example("chair").run(pipe, structure="true", latent_steps=1, lazy=True)
    html = browser.write_probe_html(head_grid(run, 0), tmp_path / "heads.html")
    assert browser.render_status(html, budget_ms=20000) == "rendered 1 scene(s)"  # one WebGL context


def test_missing_chromium_fails_with_install_hint(monkeypatch):
    monkeypatch.setattr(browser, "CANDIDATES", ("no-such-browser",))
    with pytest.raises(browser.BrowserError, match="apt-get install -y chromium"):
        browser.find_chromium()

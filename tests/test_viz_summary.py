"""viz.summary and viz.style: HTML summaries, model labels, HTML export."""
import re

import numpy as np
import plotly.graph_objects as go
import pytest

from fuse3d import Fuse3D
from viz import load_example, summary
from viz.style import camera, element_id, is_random_model, model_label, write_html
from viz.summary import dimmed


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    return load_example("chair").run(pipe, structure="true", latent_steps=1, lazy=True, threshold=0.4)


def test_dimmed_keeps_selected_patches():
    img = np.full((28, 28, 3), 200, np.uint8)
    out = dimmed(img, np.array([[True, False], [False, False]]), keep=0.5)
    assert (out[:14, :14] == 200).all() and (out[14:, :] == 100).all()


def test_summary_html(run):
    html = summary(run)._repr_html_()
    assert html.count("<img src=\"data:image/png;base64,") == run.K + 1
    assert "random weights: outputs are meaningless" in html
    assert "<code>threshold=0.4</code>" in html and "<table>" in html
    assert "the paper&#x27;s defaults: heads [0, 4, 12] @ 0.55" in html


def test_model_label(run):
    assert is_random_model(run)
    assert model_label(run) == "model: fuse3d-tiny-random (random weights: outputs are meaningless)"


def test_write_html_embeds_plotly_with_a_deterministic_id(tmp_path):
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    a = write_html(fig, tmp_path / "a.html").read_text()
    b = write_html(fig, tmp_path / "b.html").read_text()
    assert a == b
    assert f'id="{element_id(fig)}"' in a
    assert not re.search(r"<script[^>]*\bsrc=", a) and len(a) > 1_000_000  # plotly.js inline, nothing fetched
    assert 'id="mine"' in write_html(fig, tmp_path / "c.html", div_id="mine").read_text()


def test_camera():
    eye = camera(90, 0, 2)["eye"]
    assert np.allclose([eye["x"], eye["y"], eye["z"]], [0, 2, 0], atol=1e-9)

"""What a run and a condition show of themselves in a notebook (fuse3d.reports)."""
import base64
import io
import json

import numpy as np
from PIL import Image

from fuse3d import Fuse3D


def test_a_condition_shows_its_crop_with_the_selection_and_its_count(conditions):
    _, (top, bottom) = conditions
    html = top._repr_html_()
    pr = top.prepare()
    n, fg = int(pr.selected.sum()), int(pr.foreground.sum())
    assert f"{n} of {fg} object patches selected" in html and "<b>top</b>" in html
    png = base64.b64decode(html.split("base64,")[1].split('"')[0])
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert shown.shape == (259, 259, 3)
    # a selected patch keeps its brightness, an unselected object patch is dimmed
    rows, cols = np.nonzero(pr.selected)
    other = np.argwhere(pr.foreground & ~pr.selected)
    inside = shown[rows[0] * 7 + 3, cols[0] * 7 + 3].sum()
    outside = shown[other[0][0] * 7 + 3, other[0][1] * 7 + 3].sum()
    assert inside > 1.5 * outside
    assert "object patches selected" in bottom._repr_html_()


def test_a_run_shows_its_stage_table_with_timings(tiny_model_dir, conditions):
    g, locals_ = conditions
    run = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False).run(g, locals_, structure_steps=2,
                                                                                  latent_steps=2)
    html = run._repr_html_()
    assert "<th>time</th>" in html and "fuse3d-tiny-random" in html
    for stage, seconds in run.timings().items():
        assert f"{seconds:.2f} s" in html, stage
    json.dumps(run.summary())

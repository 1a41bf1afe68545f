"""viz.render: off-screen pyvista stills."""
import re

import numpy as np
import pytest
import trimesh
from PIL import Image

from viz.render import camera_position, render_mesh, render_voxels

BLOCK = np.array([[x, y, z] for x in range(30, 34) for y in range(30, 34) for z in range(30, 34)])


def colourful(image, channel):
    a = np.asarray(image).astype(int)
    others = [c for c in range(3) if c != channel]
    return int(((a[..., channel] > 150) & (a[..., others].max(-1) < 100)).sum())


def test_render_voxels_with_colours_and_values(tmp_path):
    colors = np.tile([0.9, 0.1, 0.1], (len(BLOCK), 1))
    img = render_voxels(BLOCK, colors=colors, size=(320, 240), path=tmp_path / "v.png", title="test")
    assert img.size == (320, 240) and (tmp_path / "v.png").is_file()
    assert colourful(img, 0) > 2000  # red cubes drawn
    img = render_voxels(BLOCK, values=np.linspace(0, 1, len(BLOCK)), size=(320, 240))
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 50  # a colour map and a colour bar


def test_render_mesh_uses_vertex_colours():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    mesh.visual.vertex_colors = np.tile([20, 40, 230, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    img = render_mesh(mesh, size=(300, 300))
    assert colourful(img, 2) > 5000


def test_camera_position_is_z_up():
    eye, focus, up = camera_position(0, 0, 2)
    assert np.allclose(eye, (2, 0, 0)) and focus == (0, 0, 0) and up == (0, 0, 1)
    eye, _, _ = camera_position(90, 90, 1)
    assert np.allclose(eye, (0, 0, 1), atol=1e-9)


class BlockRun:
    """What turntable reads of a run: its structure, its asset colours and its model."""

    def __init__(self):
        self.structure = np.concatenate([np.zeros((len(BLOCK), 1), int), BLOCK], 1)
        self.model_name = "a test model"

        class G:
            def voxel_colors(self, n):
                c = np.zeros((n, 3), np.float32)
                c[:, 1] = 0.9  # green
                return c

        self.gaussians = G()


def test_turntable_turns_once_and_shows_inline(tmp_path):
    from viz.render import turntable

    tt = turntable(BlockRun(), tmp_path / "spin.gif", frames=8, size=(200, 160), title="spin test")
    gif = Image.open(tt.path)
    assert gif.n_frames == 8 and gif.size == (200, 160)
    frames = []
    for i in (0, 1):  # 45° apart (a cube looks the same after 90°)
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB")).astype(int))
    assert colourful(frames[0], 1) > 500  # green cubes drawn
    assert np.abs(frames[0] - frames[1]).sum() > 0  # the view moved
    assert tt._repr_html_().startswith('<img src="data:image/gif;base64,')
    with pytest.raises(ValueError, match=".gif or .mp4"):
        turntable(BlockRun(), tmp_path / "spin.webm")


def test_figures_save_to_html_and_png_without_a_network(tmp_path):
    from viz import save, voxel_figure

    fig = voxel_figure(BLOCK, values=BLOCK[:, 0] / 33.0, title="saved")
    page = save(fig, tmp_path / "fig.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page) and len(page) > 1_000_000  # plotly.js inside, nothing fetched
    png = save(fig, tmp_path / "fig.png", size=(400, 300))
    a = np.asarray(Image.open(png).convert("RGB"))
    assert a.shape == (300, 400, 3) and len(np.unique(a.reshape(-1, 3), axis=0)) > 50
    with pytest.raises(ValueError, match=".html or .png"):
        save(fig, tmp_path / "fig.svg")

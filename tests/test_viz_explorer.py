"""viz.explorer: the linked 2D ↔ 3D attention explorer on the tiny model."""
import numpy as np
import pytest

from fuse3d import Fuse3D
from fuse3d.explore import cell_attention, patch_attention
from viz import explore


@pytest.fixture(scope="module")
def run(tiny_model_dir, conditions):
    g, locals_ = conditions
    return Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False).run(
        g, locals_, seed=0, lazy=True, structure_steps=2, latent_steps=2)


def test_a_clicked_cell_shows_its_rows_on_every_image(run):
    ex = explore(run, cell=7)
    assert len(ex.images) == run.K + 1 and ex.cell == 7
    expected = cell_attention(run, [7]).patch_maps()
    for fig, m in zip(ex.images, expected):
        np.testing.assert_allclose(fig.data[1].z, m / m.max(), rtol=1e-6)
    ex.heads.value = (1,)  # one head: redrawn from that head's rows
    one = cell_attention(run, [7]).patch_maps([1])
    np.testing.assert_allclose(ex.images[0].data[1].z, one[0] / one[0].max(), rtol=1e-6)
    assert "cell 7" in ex.status.value and "heads [1]" in ex.status.value
    # a click on a face of the 3D view selects that face's cell
    face = int(np.flatnonzero(ex.surface.triangle_voxel == 12)[0])

    class Points:
        point_inds = [face]

    ex._on_cell_click(None, Points, None)
    assert ex.cell == 12


def test_selected_patches_colour_the_cells_that_attend_to_them(run):
    ex = explore(run)
    values = ex.select_patches(run.K, [100, 101, 137])
    scores = patch_attention(run, run.K, [100, 101, 137]).mean(0).numpy()
    expected = (scores - scores.min()) / (scores.max() - scores.min())
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex.scene.data[0].intensity, expected[ex.surface.triangle_voxel], rtol=1e-5, atol=1e-6)
    assert ex.select_patches(0, []) is None
    assert len([k for k in ex.scene.layout._props if k.startswith("scene")]) == 1  # one WebGL scene

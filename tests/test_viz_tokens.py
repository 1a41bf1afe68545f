"""viz.tokens: patch grids and overlays on the condition images, unified tokens and λ."""
import numpy as np
import pytest

from fuse3d import Fuse3D
from viz import load_example
from viz.tokens import (GRID, PATCH, condition_figure, condition_layers, conditions_figure, enhancement_figure,
                        enhancement_matrix, grid_lines, image_trace, layer_trace, mask_grid, patch_grid, region_rows)


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    return load_example("chair").run(pipe, structure="true", latent_steps=1, lazy=True)


def test_patch_grid_places_values_row_major():
    g = patch_grid([0, 38, 1368], values=[0.1, 0.2, 0.3])
    assert g.shape == (GRID, GRID)
    assert g[0, 0] == 0.1 and g[1, 1] == 0.2 and g[36, 36] == 0.3
    assert np.isnan(g).sum() == GRID * GRID - 3
    assert np.nansum(patch_grid([5, 6])) == 2
    with pytest.raises(ValueError):
        patch_grid([GRID * GRID])


def test_layer_trace_aligns_cells_with_patches():
    t = layer_trace(patch_grid([37 * 2 + 3]), "x", color="#ff0000")
    assert t.x0 == PATCH / 2 and t.dx == PATCH and t.y0 == PATCH / 2 and t.dy == PATCH
    patch, token, row, col = np.asarray(t.customdata)[2, 3]
    assert (patch, token, row, col) == (77, 82, 2, 3)  # token = 5 + patch
    assert grid_lines()["path"].count("M") == 2 * (GRID + 1)


def test_condition_layers_match_the_run(run):
    local = condition_layers(run, 0)
    fg, sel = local.values()
    pr = run.prepared(0)
    assert np.array_equal(~np.isnan(fg), pr.foreground)
    assert np.array_equal(np.flatnonzero(~np.isnan(sel)), run.selected_patches(0).numpy())
    glob = condition_layers(run, run.K)
    names = list(glob)
    assert names[2] == "reverse score" and names[3].startswith("D_g")
    scores = glob["reverse score"].reshape(-1)
    cand = run.reverse_candidates.numpy()
    assert np.allclose(scores[cand], run.reverse_scores.numpy())
    assert np.array_equal(np.flatnonzero(~np.isnan(glob[names[3]])), np.sort(run.global_patches.numpy()))


def test_condition_figure_buttons_toggle_one_layer(run):
    extra = {"true back": mask_grid(np.eye(GRID, dtype=bool))}
    fig = condition_figure(run, run.K, extra=extra)
    layers = [t.name for t in fig.data[1:]]
    assert layers[-1] == "true back"
    visible = [t.visible for t in fig.data[1:]]
    assert visible.count(True) == 1 and layers[visible.index(True)].startswith("D_g")
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == layers + ["image only"]
    assert buttons[0].args[0]["visible"] == [True, True] + [False] * (len(layers) - 1)
    shown = condition_figure(run, 0, show="foreground")
    assert shown.data[1].visible is True and shown.data[2].visible is False
    with pytest.raises(ValueError, match="no layer"):
        condition_figure(run, 0, show="nothing")


def test_image_traces_carry_the_exact_pixels_as_one_png(run):
    import base64
    import io

    from PIL import Image

    for fig in (condition_figure(run, 0), conditions_figure(run)):
        image = fig.data[0]
        assert image.type == "image" and image.z is None and image.source.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(image.source.split(",", 1)[1])))
        assert np.array_equal(np.asarray(png), np.asarray(run.prepared(0).image.convert("RGB")))
    grey = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    decoded = Image.open(io.BytesIO(base64.b64decode(image_trace(grey).source.split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded), grey)


def test_conditions_figure_dims_unselected_patches(run):
    fig = conditions_figure(run)
    assert len(fig.data) == 2 * (run.K + 1)
    dim = np.asarray(fig.data[1].z)
    assert np.isnan(dim.reshape(-1)[run.selected_patches(0).numpy()]).all()


def test_region_rows_and_enhancement_matrix(run):
    rows = region_rows(run)
    assert [r["role"] for r in rows] == ["local"] * run.K + ["global"]
    assert rows[0]["patches"] == len(run.selected_patches(0))
    assert rows[-1]["patches"] == len(run.global_patches)
    assert [r["lambda"] for r in rows] == pytest.approx(run.lambdas)
    E, cells, tokens = enhancement_matrix(run, max_size=10_000)
    assert E.shape == (len(run.cells), len(run.unified_tokens.tokens))
    assert np.allclose(E, run.enhancement.dense().numpy()[cells])
    region0 = run.enhancement.cell_regions.numpy()[cells, 0]
    assert region0[: region0.sum()].all()  # region 0's cells first
    E_small, _, _ = enhancement_matrix(run, max_size=100)
    assert max(E_small.shape) <= 100
    assert len(enhancement_figure(run).data) == 2

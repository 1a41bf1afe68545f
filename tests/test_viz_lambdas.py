"""viz.lambdas: a λ sweep decodes each strength once; the slider switches cached colours."""
import numpy as np
import pytest

from fuse3d import Fuse3D
from viz import lambda_curves, lambda_sweep, lambda_sweep_figure, load_example
from viz.voxels import exposed_faces, rgb_strings


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    return load_example("chair").run(pipe, structure="true", latent_steps=1)


def test_sweep_and_slider(run):
    sweep = lambda_sweep(run, [0.0, 2.0])
    assert sweep.strengths == [0.0, 2.0]
    assert sweep.lambdas[0] == pytest.approx([1.0] * (run.K + 1))
    assert sweep.lambdas[1] == pytest.approx(run.retune(strength=2.0).lambdas)
    assert not np.allclose(sweep.colors[0], sweep.colors[1])  # λ changed the asset
    fig = lambda_sweep_figure(sweep)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0", "2"]
    owner = exposed_faces(run.structure).triangle_voxel
    assert list(steps[1].args[0]["facecolor"][0]) == list(rgb_strings(sweep.colors[1])[owner])
    assert "s = 2" in steps[1].args[1]["title.text"]
    assert list(fig.data[0].facecolor) == list(rgb_strings(sweep.colors[0])[owner])


def test_lambda_curves(run):
    fig = lambda_curves(run, [0.0, 1.0, 3.0])
    assert len(fig.data) == run.K + 1
    assert list(fig.data[0].y) == pytest.approx([r.lambdas[0] for r in (run.retune(strength=s) for s in (0, 1, 3))])


def test_runs_by_count_share_captures_and_the_figure_follows_them(run):
    from viz import count_figure, runs_by_count

    runs = runs_by_count(run)
    assert sorted(runs) == list(range(1, run.K + 1)) and runs[run.K].K == run.K
    assert runs[1].key("capture", 0) == run.key("capture", 0), "a local's capture does not depend on the others"
    fig = count_figure(runs)
    names = [t.name for t in fig.data if t.name]
    assert any("aligned cells" in n for n in names) and "global λ" in names and "unaligned cells" in names
    with pytest.raises(ValueError, match="counts must be in"):
        runs_by_count(run, [0])

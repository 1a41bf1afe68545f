"""viz.examples: ground truth of the bundled examples."""
import numpy as np
import pytest
import torch

from fuse3d import Fuse3D
from viz import cache_dir, demo_structure, load_example


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)


@pytest.mark.parametrize("name", ["chair", "car", "robot", "conflict"])
def test_examples_load_with_truth(name):
    ex = load_example(name)
    assert len(ex.parts) == len(ex.spec.local_conditions)
    assert ex.structure.shape[1] == 4 and ex.structure.dtype == torch.int32
    for loc in ex.meta["locals"]:
        assert (ex.voxels.part == loc["part_index"]).any()


def test_truth_on_the_true_structure_is_exact(pipe):
    ex = load_example("chair")
    run = ex.run(pipe, structure="true", lazy=True)
    truth = ex.truth(run)
    for t, loc in zip(truth, ex.meta["locals"]):
        assert np.array_equal(t, ex.voxels.part == loc["part_index"])


def test_truth_transfers_to_another_structure(pipe):
    ex = load_example("chair")
    shifted = ex.structure.clone()
    shifted[:, 3] = (shifted[:, 3] + 1).clamp(max=63)  # a structure one voxel higher
    run = ex.run(pipe, structure=torch.unique(shifted, dim=0), lazy=True)
    truth = ex.truth(run)
    assert all(len(t) == len(run.structure) for t in truth)
    assert 0.5 < truth[0].sum() / (ex.voxels.part == ex.meta["locals"][0]["part_index"]).sum() < 1.5


def test_global_part_patches(pipe):
    ex = load_example("chair")
    run = ex.run(pipe, lazy=True)
    seat = ex.global_part_patches(run, 1)
    assert seat.shape == (37, 37) and 10 < seat.sum() < 37 * 37 / 2
    assert not (seat & ~run.prepared(run.K).foreground).any()


def test_demo_structure_and_run_choices(pipe):
    ex = load_example("chair")
    assert torch.equal(demo_structure(pipe, ex), ex.structure)  # random weights: the true voxels
    with pytest.raises(ValueError, match="structure must be"):
        ex.run(pipe, structure="sampled")
    assert cache_dir().name == "runs"

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
    assert len(ex.parts) == len(ex.local_conditions) == len(ex.global_masks)
    assert ex.structure.shape[1] == 4 and ex.structure.dtype == torch.int32
    for k in ex.part_indices:
        assert (ex.voxels.part == k).any()


def test_truth_on_the_true_structure_is_exact(pipe):
    ex = load_example("chair")
    run = ex.run(pipe, structure="true", lazy=True)
    truth = ex.truth(run)
    for t, k in zip(truth, ex.part_indices):
        assert np.array_equal(t, ex.voxels.part == k)
    assert all(np.array_equal(a, b) for a, b in zip(ex.truth(), truth)), "the object's own voxels by default"


def test_truth_transfers_to_another_structure(pipe):
    ex = load_example("chair")
    shifted = ex.structure.clone()
    shifted[:, 3] = (shifted[:, 3] + 1).clamp(max=63)  # a structure one voxel higher
    run = ex.run(pipe, structure=torch.unique(shifted, dim=0), lazy=True)
    truth = ex.truth(run)
    assert all(len(t) == len(run.structure) for t in truth)
    assert 0.5 < truth[0].sum() / (ex.voxels.part == ex.part_indices[0]).sum() < 1.5


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


def test_an_example_from_a_seed_knows_its_restyled_colours():
    from fuse3d.data import ExampleSet

    ex = ExampleSet.from_seed(900002)
    centres = (ex.voxels.coords[:, 1:] + 0.5) / 64 - 0.5
    for k, part in enumerate(ex.part_indices):
        target = ex.local_target(k, centres)
        on, off = ex.voxels.part == part, ex.voxels.part != part
        assert not np.allclose(target[on], ex.spec.colors_at(centres)[on]), "the restyled part has new colours"
        assert np.allclose(target[off], ex.spec.colors_at(centres)[off]), "the rest keeps the object's"
    with pytest.raises(ValueError, match="restyled object is not known"):
        load_example("chair").local_target(0, centres)

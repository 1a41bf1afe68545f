"""The method on one page equals the cached, staged Run, bit for bit on the CPU."""
import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.cache import Cache
from fuse3d.method.reference import fuse3d_reference

from conftest import two_locals

FAST = dict(structure_steps=2, latent_steps=2)




@pytest.fixture(scope="module")
def case(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    g, locals_ = two_locals()
    return pipe, g, locals_


@pytest.mark.parametrize("options", [{}, {"capture_strategy": "shared"}, {"capture_tokens": "foreground", "strength": 2.0},
                                     {"lambda_mode": "adaptive", "threshold": 0.4, "refine": False},
                                     {"prefix_tokens": False, "capture_tokens": "foreground"}])
def test_run_equals_the_reference_bit_for_bit(case, options):
    pipe, g, locals_ = case
    # a fresh cache: a capture computed in another batch (another run's) may differ in the last bit
    pipe = Fuse3D(pipe.trellis, Cache(), progress=False)
    run = pipe.run(g, locals_, seed=1, **FAST, **options)
    ref = fuse3d_reference(pipe.trellis, g, locals_, run.params)
    assert torch.equal(run.structure, ref.structure) and torch.equal(run.cells, ref.cells)
    for k in range(run.K):
        assert torch.equal(run.tokens(k), ref.tokens[k])
        assert torch.equal(run.head_scores(k), ref.head_scores[k])
        assert torch.equal(run.raw_mask(k), ref.raw_masks[k]) and torch.equal(run.refined_mask(k), ref.refined_masks[k])
    assert torch.equal(run.reverse_map, ref.reverse_map)
    assert torch.equal(run.unaligned, ref.unaligned) and torch.equal(run.global_patches, ref.global_patches)
    assert torch.equal(run.unified_tokens.tokens, ref.unified.tokens) and run.lambdas == ref.lambdas
    assert torch.equal(run.final.feats, ref.final)


def test_the_reference_refuses_what_it_does_not_cover(case):
    pipe, g, locals_ = case
    run = pipe.run(g, locals_, lazy=True, fusion="crop", **FAST)
    with pytest.raises(NotImplementedError, match="through fuse3d.Fuse3D.run"):
        fuse3d_reference(pipe.trellis, g, locals_, run.params)

"""The tiny model end to end: write → load → structure → latent → all three decoders (CPU)."""
import numpy as np
import pytest
import torch
from PIL import Image

from fuse3d.trellis import SparseTensor
from fuse3d.trellis.pipeline import load_pipeline


def test_tiny_model_end_to_end(tiny_pipeline):
    pipe = tiny_pipeline
    assert pipe.model_name == "fuse3d-tiny-random"
    img = Image.fromarray((np.random.default_rng(0).random((518, 518, 3)) * 255).astype(np.uint8))
    cond = pipe.encode_images([img])
    assert cond.shape == (1, 1374, 64)
    coords = pipe.sample_structure(cond, seed=3, progress=False)
    assert coords.dtype == torch.int32 and coords.shape[1] == 4 and len(coords) > 100
    assert coords[:, 1:].min() >= 0 and coords[:, 1:].max() < 64
    keys = ((coords[:, 0].long() * 64 + coords[:, 1]) * 64 + coords[:, 2]) * 64 + coords[:, 3]
    assert torch.all(keys[1:] > keys[:-1]), "structure coords sorted (batch, x, y, z)"
    slat = pipe.sample_latent(cond, coords, seed=3, progress=False)
    assert torch.equal(slat.coords, coords) and slat.feats.shape == (len(coords), 8)
    out = pipe.decode(slat, ["gaussian", "mesh", "radiance_field"])
    assert out["gaussian"].feats.shape == (len(coords), pipe.slat_decoder_gs.feature_layout["opacity"][1])
    assert out["radiance_field"].feats.shape[0] == len(coords)
    assert out["mesh"].feats.shape == (64 * len(coords), 101)
    for v in out.values():
        assert torch.isfinite(v.feats).all()
    # seeds make sampling reproducible
    again = pipe.sample_structure(cond, seed=3, progress=False)
    assert torch.equal(again, coords)


def test_module_paths_and_call_context(tiny_pipeline):
    pipe = tiny_pipeline
    assert isinstance(pipe.get_submodule("slat_flow.blocks.1.cross_attn"), torch.nn.Module)
    calls = []

    class Ctx:
        def __init__(self, call):
            calls.append(call)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    coords = torch.tensor([[0, 10, 10, 10], [0, 10, 10, 11], [0, 11, 10, 10]], dtype=torch.int32)
    cond = torch.randn(1, 1374, 64)
    steps = []
    pipe.sample_latent(cond, coords, progress=False, call_context=Ctx,
                       on_step=lambda i, t, x: steps.append((i, t, isinstance(x, SparseTensor))),
                       steps=4, cfg_strength=2.0, cfg_interval=(0.5, 1.0), rescale_t=1.0)
    # t = 1, .75, .5, .25: CFG (cond + uncond) for the first three steps, cond only for the last
    assert [(c.step, c.branch) for c in calls] == [
        (0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond"), (2, "cond"), (2, "uncond"), (3, "cond")]
    assert [s[0] for s in steps] == [0, 1, 2, 3] and all(s[2] for s in steps)


def test_decode_unknown_format(tiny_pipeline):
    with pytest.raises(ValueError, match="unknown format 'voxels'"):
        tiny_pipeline.decode(None, ["voxels"])


@pytest.mark.gpu
def test_tiny_model_on_cuda_fp16(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir, device="cuda", progress=False)
    assert pipe.slat_flow.blocks[0].cross_attn.to_q.weight.dtype == torch.float16
    cond = pipe.encode_images(torch.rand(1, 3, 518, 518))
    coords = pipe.sample_structure(cond, seed=0, progress=False)
    slat = pipe.sample_latent(cond, coords, seed=0, progress=False)
    out = pipe.decode(slat, ["gaussian", "mesh", "radiance_field"])
    assert slat.feats.dtype == torch.float32 and torch.isfinite(slat.feats).all()
    assert all(torch.isfinite(v.feats).all() for v in out.values())

"""Interventions: head ablation and token patching, on hand-made tensors and on the tiny model."""
import pytest
import torch

from fuse3d.method.interventions import InterveningProcessor, block_plan, patched_context
from fuse3d.trellis.attention import MultiHeadAttention, SDPAProcessor
from fuse3d.trellis.sampler import CallTracker, ModelCall


def attention():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, ctx_channels=8, type="cross")
    return attn, torch.randn(1, 5, 16), torch.randn(1, 6, 8)


def heads_out(attn, x, ctx):
    """The per-head outputs (before to_out) of plain attention."""
    q, k, v = attn._project(x, ctx)
    return SDPAProcessor()(attn, q, k, v, batch=range(1))


def test_zero_ablation_removes_exactly_the_chosen_heads():
    attn, x, ctx = attention()
    ref = heads_out(attn, x, ctx)
    tracker = CallTracker()
    proc = InterveningProcessor(SDPAProcessor(), tracker, heads=[1, 3])
    q, k, v = attn._project(x, ctx)
    with tracker(ModelCall(0, 1.0, "uncond")):  # both passes: the network runs without those heads
        out = proc(attn, q, k, v, batch=range(1))
    assert (out[:, :, [1, 3]] == 0).all() and torch.equal(out[:, :, [0, 2]], ref[:, :, [0, 2]])
    mean = InterveningProcessor(SDPAProcessor(), tracker, heads=[2], mode="mean")(attn, q, k, v, batch=range(1))
    assert torch.allclose(mean[:, :, 2], ref[:, :, 2].mean(1, keepdim=True).expand_as(ref[:, :, 2]))


def test_interventions_act_only_at_the_chosen_steps():
    attn, x, ctx = attention()
    q, k, v = attn._project(x, ctx)
    tracker = CallTracker()
    proc = InterveningProcessor(SDPAProcessor(), tracker, heads=[0], steps=[2])
    with tracker(ModelCall(1, 0.5, "cond")):
        assert torch.equal(proc(attn, q, k, v, batch=range(1)), heads_out(attn, x, ctx))
    with tracker(ModelCall(2, 0.3, "cond")):
        assert (proc(attn, q, k, v, batch=range(1))[:, :, 0] == 0).all()


def test_token_patching_swaps_keys_and_values_of_the_region_in_the_conditional_pass():
    attn, x, ctx = attention()
    replacement = torch.randn(2, 8)
    patched_ctx = ctx.clone()
    patched_ctx[0, [2, 4]] = replacement
    tracker = CallTracker()
    from fuse3d.method.interventions import TokenPatch

    proc = InterveningProcessor(SDPAProcessor(), tracker, patch=TokenPatch(torch.tensor([2, 4]), replacement))
    q, k, v = attn._project(x, ctx)
    with tracker(ModelCall(0, 1.0, "cond")):
        out = proc(attn, q, k, v, batch=range(1))
    assert torch.allclose(out, heads_out(attn, x, patched_ctx), atol=1e-6)
    with tracker(ModelCall(0, 1.0, "uncond")):
        assert torch.equal(proc(attn, q, k, v, batch=range(1)), heads_out(attn, x, ctx))


def test_patched_context_takes_the_source_tokens_at_the_same_patches():
    region = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    patch = torch.tensor([-1, -1, 7, 9, -1, -1, 3])
    source = torch.arange(2 + 20).float()[:, None].expand(-1, 4)  # token t holds the value t
    p = patched_context(region, patch, 0, source, prefix=2)
    assert p.rows.tolist() == [0, 1, 2, 3] and p.tokens[:, 0].tolist() == [0, 1, 9, 11]  # CLS, REG, 2 + 7, 2 + 9
    with pytest.raises(ValueError, match="no region 5"):
        patched_context(region, patch, 5, source, prefix=2)


def test_block_plan_checks_blocks():
    assert block_plan(3, [(1, (0, 2))], None, True) == {0: ((), True), 1: ((0, 2), True), 2: ((), True)}
    assert block_plan(3, [(1, (0,))], [2], True) == {1: ((0,), False), 2: ((), True)}
    with pytest.raises(ValueError, match="blocks 0..2"):
        block_plan(3, [(5, (0,))], None, False)


def test_run_intervene_on_the_tiny_model(tiny_model_dir, conditions):
    from fuse3d import Fuse3D

    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    g, locals_ = conditions
    run = pipe.run(g, locals_, seed=0, structure_steps=2, latent_steps=2)
    ablated = run.intervene(ablate_heads={0: [0, 1, 2, 3], 1: list(range(16))})
    assert [s for s, _ in ablated.invalidated()] == ["final", "gaussians", "mesh"], "only the final sampling changes"
    assert not torch.equal(ablated.final.feats, run.final.feats)
    none = run.intervene(ablate_heads={0: []})
    assert torch.equal(none.final.feats, run.final.feats), "ablating no head changes nothing"
    same = run.intervene(patch_tokens=(0, 0))  # local 0's tokens patched with its own: nothing changes
    assert torch.allclose(same.final.feats, run.final.feats, atol=1e-5)
    swapped = run.intervene(patch_tokens=(0, 2), blocks=[1], steps=[0])
    assert not torch.allclose(swapped.final.feats, run.final.feats, atol=1e-5)
    with pytest.raises(ValueError, match="blocks 0..1"):
        run.intervene(ablate_heads={7: [0]})
    with pytest.raises(ValueError, match=r"heads \[16\] out of range"):
        run.intervene(ablate_heads={0: [16]})
    with pytest.raises(ValueError, match="patch_tokens is"):
        run.intervene(patch_tokens=(4, 0))


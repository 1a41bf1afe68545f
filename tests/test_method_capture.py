"""Capture of cross-attention: running sums, processors, token plans, strategies."""
import pytest
import torch

from fuse3d.method.capture import (CaptureItem, CapturePlan, CaptureProcessor, CaptureState, CaptureTarget,
                                   SharedCaptureProcessor, capture_tokens)
from fuse3d.trellis.attention import MultiHeadAttention
from fuse3d.trellis.sampler import CallTracker, ModelCall


def explicit_probs(q, k, scale):
    return torch.einsum("qhd,khd->hqk", q, k).mul(scale)


def test_capture_sums_match_explicit_softmax():
    torch.manual_seed(0)
    H, M, T, D = 3, 7, 6, 4
    q = torch.randn(2, M, H, D)
    k = torch.randn(2, T, H, D)
    key_mask = torch.tensor([[True] * T, [True] * 4 + [False] * 2])  # element 1 has 4 real tokens
    targets = [CaptureTarget("forward", torch.tensor([1, 3])), CaptureTarget("reverse", torch.tensor([0, 2]))]
    state = CaptureState(targets, H, M, num_blocks=2, num_steps=3, key_mask=key_mask)
    state.add(block=1, step=2, scale=0.5, q=q, k=k, batch=range(2))
    state.add(block=0, step=2, scale=0.5, q=q * 2, k=k, batch=range(2))
    l0a, l0b = explicit_probs(q[0], k[0], 0.5), explicit_probs(q[0] * 2, k[0], 0.5)
    fwd = (l0a.softmax(-1)[:, :, [1, 3]].sum(-1) + l0b.softmax(-1)[:, :, [1, 3]].sum(-1)) / 2
    out = state.sums[0].mean()
    assert torch.allclose(out["mean"], fwd, atol=1e-6)
    assert torch.allclose(out["by_block"][1], l0a.softmax(-1)[:, :, [1, 3]].sum(-1), atol=1e-6)
    assert torch.allclose(out["by_step"][2], fwd, atol=1e-6) and out["by_step"][0].abs().sum() == 0
    # reverse: softmax over cells (masked tokens do not matter: candidates are real tokens)
    l1a, l1b = explicit_probs(q[1], k[1], 0.5), explicit_probs(q[1] * 2, k[1], 0.5)
    rev = (l1a.softmax(1)[:, :, [0, 2]] + l1b.softmax(1)[:, :, [0, 2]]) / 2
    assert torch.allclose(state.sums[1].mean()["mean"], rev, atol=1e-6)
    assert torch.allclose(state.sums[1].mean()["mean"].sum(1), torch.ones(H, 2), atol=1e-5)


def test_capture_processor_keeps_the_conditional_pass_and_chosen_blocks():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, ctx_channels=8, type="cross")
    tracker = CallTracker()
    state = CaptureState([CaptureTarget("forward", torch.tensor([0]))], 4, 5, num_blocks=3, num_steps=2, blocks=[1])
    proc1, proc2 = CaptureProcessor(state, tracker, 1), CaptureProcessor(state, tracker, 2)
    x, ctx = torch.randn(1, 5, 16), torch.randn(1, 3, 8)
    for branch in ("cond", "uncond"):
        with tracker(ModelCall(0, 1.0, branch)):
            for proc in (proc1, proc2):
                attn.processor = proc
                out = attn(x, ctx)
    assert state.sums[0].count == 1  # block 1, conditional pass only
    attn.processor = None
    from fuse3d.trellis.attention import SDPAProcessor

    attn.processor = SDPAProcessor()
    assert torch.allclose(out, attn(x, ctx), atol=1e-6)  # outputs are plain attention


def test_capture_tokens_feed_the_full_image_or_its_foreground():
    sel, fg = torch.tensor([3, 7]), torch.tensor([1, 3, 5, 7])
    fed, target = capture_tokens(5 + 16, 5, sel)
    assert fed == list(range(21)) and target.kind == "forward" and target.tokens.tolist() == [8, 12]
    fed, target = capture_tokens(5 + 16, 5, sel, foreground=fg)
    assert fed == [0, 1, 2, 3, 4, 6, 8, 10, 12] and target.tokens.tolist() == [6, 8]  # positions in what is fed
    fed, target = capture_tokens(5 + 16, 5, sel, reverse=True)
    assert target.kind == "reverse" and target.tokens.tolist() == [8, 12] and len(fed) == 21


def test_shared_strategy_scores_local_keys_from_the_blocks_own_projection():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, ctx_channels=8, type="cross", qk_rms_norm=True)
    tracker = CallTracker()
    local_ctx = torch.randn(6, 8)
    targets = [CaptureTarget("forward", torch.tensor([1, 2])), CaptureTarget("reverse", torch.tensor([0]))]
    state = CaptureState(targets, 4, 5, num_blocks=1, num_steps=1)
    attn.processor = SharedCaptureProcessor(state, tracker, 0, [local_ctx], reverse_row=1)
    x, global_ctx = torch.randn(1, 5, 16), torch.randn(1, 3, 8)
    with tracker(ModelCall(0, 1.0, "cond")):
        attn(x, global_ctx)
    # the same sums as a separate capture whose keys are the local context's
    ref = CaptureState(targets[:1], 4, 5, num_blocks=1, num_steps=1)
    q = attn.q_rms_norm(attn.to_q(x).reshape(1, 5, 4, 4))
    k, _ = attn.project_context(local_ctx[None])
    ref.add(0, 0, attn.scale, q, k, range(1))
    assert torch.allclose(state.sums[0].total, ref.sums[0].total, atol=1e-6) and state.sums[1].count == 1


def test_a_plan_names_a_known_strategy():
    item = CaptureItem("a", torch.zeros(3, 4), [0, 1, 2], CaptureTarget("forward", torch.tensor([1])), 0)
    with pytest.raises(ValueError, match="capture strategy must be one of"):
        CapturePlan(torch.zeros(1, 4), 1, 4, 1, [item], {"steps": 1}, strategy="together")

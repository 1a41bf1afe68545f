import torch

from fuse3d.method.enhancement import enhanced_attention, enhancement_tables
from fuse3d.method.processors import CallTracker, CaptureProcessor, CaptureState, CaptureTarget, EnhanceProcessor
from fuse3d.trellis.attention import MultiHeadAttention
from fuse3d.trellis.sampler import ModelCall


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


def test_enhance_processor_only_in_the_conditional_pass():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, ctx_channels=8, type="cross")
    x, ctx = torch.randn(1, 5, 16), torch.randn(1, 3, 8)
    tables = enhancement_tables([torch.tensor([True, False, True, False, False])], torch.tensor([False, True, False, True, True]),
                                torch.tensor([0, 0, 1]), [4.0, 2.0])
    tracker = CallTracker()
    plain = attn(x, ctx)
    attn.processor = EnhanceProcessor(tables, tracker, backend="explicit")
    with tracker(ModelCall(0, 1.0, "uncond")):
        assert torch.allclose(attn(x, ctx), plain, atol=1e-6)
    with tracker(ModelCall(0, 1.0, "cond")):
        enhanced = attn(x, ctx)
    q = attn.to_q(x).reshape(1, 5, 4, 4)
    kk, v = attn.to_kv(ctx).reshape(1, 3, 2, 4, 4).unbind(2)
    expected = attn.to_out(enhanced_attention(q, kk, v, attn.scale, tables).reshape(1, 5, 16))
    assert torch.allclose(enhanced, expected, atol=1e-6) and not torch.allclose(enhanced, plain, atol=1e-3)


def _lse_case(device):
    from fuse3d.method.processors import attention_logsumexp

    torch.manual_seed(0)
    q = torch.randn(4, 300, 64, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    k = torch.randn(4, 77, 64, device=device, dtype=q.dtype)
    v = torch.randn(4, 77, 64, device=device, dtype=q.dtype)
    lse, out = attention_logsumexp(q, k, 0.125, v)
    logits = (q.float() @ k.float().transpose(1, 2)) * 0.125
    tol = 2e-2 if q.dtype == torch.float16 else 1e-4
    assert lse.dtype == torch.float32 and (lse - torch.logsumexp(logits, -1)).abs().max() < tol
    assert (out.float() - logits.softmax(-1) @ v.float()).abs().max() < tol


def test_attention_logsumexp_cpu():
    _lse_case("cpu")


import pytest  # noqa: E402


@pytest.mark.gpu
def test_attention_logsumexp_fused_on_cuda():
    _lse_case("cuda")

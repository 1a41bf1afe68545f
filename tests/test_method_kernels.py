"""Attention kernels: enhanced attention (explicit, region-split), its processor, log-sum-exps."""
import pytest
import torch

from fuse3d.method.enhancement import enhancement_tables, identity_tables
from fuse3d.method.kernels import EnhanceProcessor, attention_logsumexp, enhanced_attention, region_split_attention
from fuse3d.trellis.attention import MultiHeadAttention
from fuse3d.trellis.sampler import CallTracker, ModelCall


def test_explicit_enhancement_equals_dense_reference():
    torch.manual_seed(0)
    cells, tokens, heads, d = 37, 11, 4, 8
    q, k, v = torch.randn(2, cells, heads, d), torch.randn(2, tokens, heads, d), torch.randn(2, tokens, heads, d)
    aligned = [torch.rand(cells) > 0.5, torch.rand(cells) > 0.7]
    unaligned = ~(aligned[0] | aligned[1])
    region = torch.tensor([0] * 4 + [1] * 3 + [2] * 4)
    tables = enhancement_tables(aligned, unaligned, region, [1.7, 4.0, 0.5])
    E = tables.dense()
    scale = d ** -0.5
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale * E
    ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)
    out = enhanced_attention(q, k, v, scale, tables, chunk=5)  # several chunks
    assert (out - ref).abs().max() < 1e-5
    # with E = 1 it is plain attention
    plain = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert (enhanced_attention(q, k, v, scale, identity_tables(cells, region)) - plain).abs().max() < 1e-5


def test_region_split_attention_is_exact():
    torch.manual_seed(1)
    cells, heads, d = 29, 3, 8
    region = torch.tensor([0] * 5 + [1] * 4 + [2] * 6)
    q, k, v = torch.randn(2, cells, heads, d), torch.randn(2, 15, heads, d), torch.randn(2, 15, heads, d)
    aligned = [torch.rand(cells) > 0.5, torch.rand(cells) > 0.5]  # overlapping regions too
    tables = enhancement_tables(aligned, ~(aligned[0] | aligned[1]), region, [2.5, 0.5, 4.0])
    ref = enhanced_attention(q, k, v, d ** -0.5, tables)
    assert (region_split_attention(q, k, v, d ** -0.5, tables) - ref).abs().max() < 1e-5


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


@pytest.mark.gpu
def test_attention_logsumexp_fused_on_cuda():
    _lse_case("cuda")

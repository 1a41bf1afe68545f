import math

import pytest
import torch

from fuse3d.method.enhancement import (
    enhanced_attention,
    enhancement_tables,
    global_lambda,
    identity_tables,
    region_lambdas,
)


def test_lambda_modes():
    # 20 of 1369 patches selected, of 100 foreground patches
    assert region_lambdas(2.0, "constant", [20], [100], 1369) == [3.0]
    assert region_lambdas(2.0, "adaptive", [20], [100], 1369) == [(100 / 20 - 1) * 2 + 1]
    assert math.isclose(region_lambdas(2.0, "share", [20], [100], 1369)[0], 1 + 2 * (1 - 20 / 1369))
    # smaller regions get stronger λ in the share and adaptive modes
    small, big = region_lambdas(1.0, "share", [10, 400], [500, 500], 1369)
    assert small > big
    assert global_lambda(1.5, "constant", 30, 1369) == 2.5
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            region_lambdas(bad, "constant", [1], [1], 1369)
    with pytest.raises(ValueError, match="lambda_mode"):
        region_lambdas(1.0, "magic", [1], [1], 1369)


def test_tables_define_E_without_storing_it():
    aligned = [torch.tensor([True, True, False, False]), torch.tensor([False, True, True, False])]
    unaligned = torch.tensor([False, False, False, True])
    token_region = torch.tensor([0, 0, 1, 2, 2])
    t = enhancement_tables(aligned, unaligned, token_region, [2.0, 3.0, 5.0])
    expected = torch.tensor([
        [2, 2, 1, 1, 1],   # cell 0 ∈ V_0
        [2, 2, 3, 1, 1],   # cell 1 ∈ V_0 ∩ V_1: each local's tokens get its own λ
        [1, 1, 3, 1, 1],   # cell 2 ∈ V_1
        [1, 1, 1, 5, 5],   # cell 3 unaligned × global tokens
    ], dtype=torch.float32)
    assert torch.equal(t.dense(), expected)
    assert torch.equal(t.factors(slice(1, 3)), expected[1:3])
    assert t.cell_regions.shape == (4, 3)
    assert torch.equal(identity_tables(4, token_region).dense(), torch.ones(4, 5))
    with pytest.raises(ValueError, match="need 3 λ values"):
        enhancement_tables(aligned, unaligned, token_region, [1.0])
    with pytest.raises(ValueError, match="finite number"):
        enhancement_tables(aligned, unaligned, token_region, [1.0, float("nan"), 1.0])


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
    from fuse3d.method.enhancement import region_split_attention

    torch.manual_seed(1)
    cells, heads, d = 29, 3, 8
    region = torch.tensor([0] * 5 + [1] * 4 + [2] * 6)
    q, k, v = torch.randn(2, cells, heads, d), torch.randn(2, 15, heads, d), torch.randn(2, 15, heads, d)
    aligned = [torch.rand(cells) > 0.5, torch.rand(cells) > 0.5]  # overlapping regions too
    tables = enhancement_tables(aligned, ~(aligned[0] | aligned[1]), region, [2.5, 0.5, 4.0])
    ref = enhanced_attention(q, k, v, d ** -0.5, tables)
    assert (region_split_attention(q, k, v, d ** -0.5, tables) - ref).abs().max() < 1e-5

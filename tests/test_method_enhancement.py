import math

import pytest
import torch

from fuse3d.method.enhancement import enhancement_tables, global_lambda, identity_tables, region_lambdas, run_lambdas


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


def test_run_lambdas_add_the_global_region_unless_inpainting():
    local = region_lambdas(1.0, "share", [20, 40], [100, 100], 1369)
    assert run_lambdas(1.0, "share", [20, 40], [100, 100], 1369, global_selected=300) == local + [
        global_lambda(1.0, "share", 300, 1369)]
    assert run_lambdas(1.0, "share", [20, 40], [100, 100], 1369, with_global=False) == local
    assert run_lambdas(1.0, "share", [20], [100], 1369, reverse_alignment=False)[-1] == 1.0
    assert run_lambdas(1.0, "share", [20], [100], 1369, explicit=[7.0], explicit_global=2.0) == [7.0, 2.0]


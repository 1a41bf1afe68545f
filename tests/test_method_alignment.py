import itertools

import pytest
import torch

from fuse3d.method.alignment import (
    cells_of_voxels,
    cells_to_voxels,
    forward_alignment,
    minmax,
    neighbourhoods,
    refine,
    reverse_alignment,
    unaligned_cells,
)


def cube(n, origin=(0, 0, 0)):
    return torch.tensor([[origin[0] + x, origin[1] + y, origin[2] + z]
                         for x, y, z in itertools.product(range(n), repeat=3)])


def test_cells_of_voxels_matches_flow_order():
    coords = torch.tensor([[0, 5, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0], [0, 4, 1, 1]], dtype=torch.int32)
    cells, voxel_cell = cells_of_voxels(coords)
    assert cells.tolist() == [[0, 0, 0, 0], [0, 2, 0, 0]]
    assert voxel_cell.tolist() == [1, 0, 0, 1]
    assert cells_to_voxels(torch.tensor([True, False]), voxel_cell).tolist() == [False, True, True, False]


def test_forward_alignment_known_answer():
    # 3 heads × 4 cells; heads 0 and 2 agree that cell 1 and 3 are the region, head 1 is noise
    scores = torch.tensor([[0.1, 0.9, 0.1, 0.7], [5.0, 0.0, 5.0, 0.0], [0.1, 1.1, 0.1, 0.5]])
    score, mask = forward_alignment(scores, heads=[0, 2], threshold=0.55)
    # mean over heads: [0.1, 1.0, 0.1, 0.6] → minmax [0, 1, 0, 0.5/0.9]
    assert torch.allclose(score, torch.tensor([0.0, 1.0, 0.0, 0.5 / 0.9]))
    assert mask.tolist() == [False, True, False, True]
    assert forward_alignment(scores, heads=[1], threshold=0.55)[1].tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match=r"heads \[3\] out of range: the model has heads 0..2"):
        forward_alignment(scores, heads=[3])
    with pytest.raises(ValueError, match="threshold must be in"):
        forward_alignment(scores, heads=[0], threshold=1.5)


def test_minmax_constant_is_zero():
    assert minmax(torch.ones(4)).tolist() == [0.0] * 4


def test_neighbourhood_ties_on_a_lattice():
    xyz = cube(5)
    centre = 62  # (2, 2, 2)
    idx, valid = neighbourhoods(xyz, k=16, ties="include")
    members = idx[centre][valid[centre]]
    d2 = ((xyz[members] - xyz[centre]) ** 2).sum(1)
    # itself, 6 at distance 1 and all 12 tied at √2: 19 cells, none farther
    assert len(members) == 19 and d2.max() == 2 and (d2 == 2).sum() == 12
    idx, valid = neighbourhoods(xyz, k=16, ties="index")
    members = idx[centre][valid[centre]]
    assert len(members) == 16
    d2 = ((xyz[members] - xyz[centre]) ** 2).sum(1)
    # the 9 of 12 tied cells kept are those with the lowest index (x, then y, then z)
    tied = sorted(i for i in range(len(xyz)) if ((xyz[i] - xyz[centre]) ** 2).sum() == 2)
    assert sorted(members[d2 == 2].tolist()) == tied[:9]
    # the rule is deterministic
    assert torch.equal(neighbourhoods(xyz, 16, "index")[0], idx)


def test_refine_fills_a_hole_and_clears_an_outlier():
    xyz = torch.cat([cube(5), cube(3, origin=(10, 10, 10))])
    mask = torch.zeros(len(xyz), dtype=torch.bool)
    mask[:125] = True
    mask[62] = False  # a hole in the middle of the selected cube
    mask[125 + 13] = True  # a lone selected cell in the middle of the other cube
    out = refine(mask, xyz, k=16, fill=0.6, clear=0.4)
    assert out[62] and not out[125 + 13]
    # corners of the selected cube keep their label (their neighbourhoods are inside the cube)
    assert out[:125].sum() >= 120
    with pytest.raises(ValueError, match="clear <= fill"):
        refine(mask, xyz, fill=0.3, clear=0.5)


def test_refine_vote_thresholds_are_inclusive_for_fill_and_strict_for_clear():
    # a line of 5 cells, k = 5 → every neighbourhood is the whole line
    xyz = torch.tensor([[i, 0, 0] for i in range(5)])
    three = torch.tensor([True, True, True, False, False])  # 3/5 = 0.6 → fill
    assert refine(three, xyz, k=5).tolist() == [True] * 5
    one = torch.tensor([True, False, False, True, False])  # 2/5 = 0.4 → not cleared
    assert refine(one, xyz, k=5).tolist() == one.tolist()
    lone = torch.tensor([True, False, False, False, False])  # 1/5 < 0.4 → cleared
    assert refine(lone, xyz, k=5).tolist() == [False] * 5


def test_reverse_alignment_known_answer():
    # 1 head, 3 cells, 4 candidate tokens; cells 0 and 2 are unaligned
    att = torch.tensor([[[0.1, 0.5, 0.0, 0.2], [0.8, 0.0, 0.9, 0.1], [0.1, 0.5, 0.1, 0.7]]])
    unaligned = unaligned_cells([torch.tensor([False, True, False])], 3)
    assert unaligned.tolist() == [True, False, True]
    score, sel = reverse_alignment(att, unaligned, heads=[0], threshold=0.55)
    # per token: [0.2, 1.0, 0.1, 0.9] → minmax [1/9, 1, 0, 8/9]
    assert torch.allclose(score, torch.tensor([0.1 / 0.9, 1.0, 0.0, 0.8 / 0.9]))
    assert sel.tolist() == [False, True, False, True]
    nothing = reverse_alignment(att, torch.zeros(3, dtype=torch.bool), heads=[0])[1]
    assert not nothing.any()

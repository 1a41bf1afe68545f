import numpy as np
import pytest
import torch

from fuse3d.method.fusion import foreground_patches, patch_grid_mask, patch_indices, select_tokens, token_indices, unify_tokens


def test_patch_mask_any_pixel_and_min_coverage():
    m = np.zeros((28, 28), bool)
    m[0, 0] = True  # one pixel of patch (0, 0)
    m[14:28, 14:21] = True  # half of patch (1, 1)
    assert patch_grid_mask(m).tolist() == [[True, False], [False, True]]
    assert patch_grid_mask(m, min_coverage=0.5).tolist() == [[False, False], [False, True]]
    assert patch_grid_mask(m, min_coverage=0.6).tolist() == [[False, False], [False, False]]
    with pytest.raises(ValueError, match="divisible by 14"):
        patch_grid_mask(np.zeros((30, 30), bool))
    with pytest.raises(ValueError, match="min_coverage"):
        patch_grid_mask(m, min_coverage=2)


def test_foreground_patches_any_non_black_pixel():
    img = np.zeros((518, 518, 3), np.uint8)
    img[14 * 3 + 5, 14 * 7 + 13] = (0, 1, 0)
    fg = foreground_patches(img)
    assert fg.shape == (37, 37) and fg.sum() == 1 and fg[3, 7]


def test_token_indices_and_selection():
    mask = np.zeros((37, 37), bool)
    mask[0, 1] = mask[2, 0] = True
    p = patch_indices(mask)
    assert p.tolist() == [1, 74]
    assert token_indices(p, 5).tolist() == [0, 1, 2, 3, 4, 6, 79]  # patch (i, j) is token 5 + 37 i + j
    tokens = torch.arange(1374.0)[:, None].repeat(1, 2)
    sel = select_tokens(tokens, p, 5)
    assert sel[:, 0].tolist() == [0, 1, 2, 3, 4, 6, 79]


def test_unified_token_order_and_regions():
    a = torch.full((5 + 2, 3), 1.0)
    b = torch.full((5 + 1, 3), 2.0)
    g = torch.full((5 + 3, 3), 3.0)
    u = unify_tokens([a, b, g], [torch.tensor([4, 9]), torch.tensor([0]), torch.tensor([1, 2, 3])], 5)
    assert u.tokens[:, 0].tolist() == [1.0] * 7 + [2.0] * 6 + [3.0] * 8
    assert u.token_region.tolist() == [0] * 7 + [1] * 6 + [2] * 8
    assert u.token_patch.tolist() == [-1] * 5 + [4, 9] + [-1] * 5 + [0] + [-1] * 5 + [1, 2, 3]
    assert u.num_regions == 3
    with pytest.raises(ValueError, match="tokens for"):
        unify_tokens([a], [torch.tensor([1])], 5)

"""fuse3d.metrics: IoU, tolerant F-score, per-part colour error."""
import numpy as np
import pytest

from fuse3d.metrics import fused_color_scores, iou, part_color_error, voxel_extents, voxel_f_score, voxel_iou


def cube(offset=0, n=4):
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return g + offset


def test_voxel_iou_and_tolerant_f_score():
    a = cube()
    assert voxel_iou(a, a) == 1.0
    shifted = cube(offset=np.array([1, 0, 0]))
    assert voxel_iou(a, shifted) == pytest.approx(48 / 80)
    far = cube(offset=np.array([10, 0, 0]))
    assert voxel_iou(a, far) == 0.0
    f = voxel_f_score(a, cube(offset=np.array([1, 1, 1])))  # one voxel off diagonally: all within tolerance
    assert f == {"precision": 1.0, "recall": 1.0, "f_score": 1.0}
    assert voxel_f_score(a, far)["f_score"] == 0.0
    half = voxel_f_score(a[:32], a)  # predicted half of the cube: precise; recall counts the tolerance
    assert half["precision"] == 1.0 and 0.5 < half["recall"] < 1.0


def test_voxel_extents_are_the_bounding_box_in_voxels():
    assert voxel_extents(np.array([[3, 4, 5], [10, 4, 7]])) == [8, 1, 3]
    assert voxel_extents(np.zeros((0, 3), np.int64)) == [0, 0, 0]


def test_part_color_error_averages_parts_not_voxels():
    rgb = np.zeros((4, 3))
    target = np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]], float)
    label = np.array([0, 1, 1, 1])
    assert part_color_error(rgb, target, label) == pytest.approx(0.5)  # (1 + 0) / 2, not 1/4


def test_fused_color_scores_tell_a_shifted_part_from_a_scattered_one():
    target = np.full((4, 3), 0.5)
    shifted = fused_color_scores(target + 0.2, target)  # the whole part 0.2 off: no scatter
    scattered = fused_color_scores(target + np.array([[0.2], [-0.2], [0.2], [-0.2]]), target)  # right on average
    assert shifted["error"] == pytest.approx(0.2) and scattered["error"] == pytest.approx(0.2)
    assert shifted["mean_color_error"] == pytest.approx(0.2) and shifted["spread"] == pytest.approx(0)
    assert scattered["mean_color_error"] == pytest.approx(0) and scattered["spread"] == pytest.approx(0.2)
    assert fused_color_scores(np.eye(3), np.eye(3))["target_spread"] > 0  # a patterned target has its own spread
    with pytest.raises(ValueError, match="non-empty"):
        fused_color_scores(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="equal"):
        fused_color_scores(np.zeros((2, 3)), np.zeros((3, 3)))


def test_mask_iou():
    a, b = np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)
    assert iou(a, b) == pytest.approx(1 / 3) and iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0

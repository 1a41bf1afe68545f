"""On-demand attention from both sides (fuse3d.explore, the explore stage) on the tiny model."""
import numpy as np
import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.explore import cell_attention, patch_attention
from fuse3d.method.capture import CaptureState, CaptureTarget

FAST = dict(structure_steps=2, latent_steps=2)


@pytest.fixture(scope="module")
def run(tiny_model_dir, conditions):
    g, locals_ = conditions
    return Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False).run(g, locals_, seed=0, lazy=True, **FAST)


def test_a_rows_target_keeps_the_explicit_softmax_rows_of_its_cells():
    torch.manual_seed(0)
    q, k = torch.randn(2, 30, 4, 8), torch.randn(2, 12, 4, 8)  # [b, cells, H, D], [b, tokens, H, D]
    cells = torch.tensor([3, 17, 29])
    state = CaptureState([CaptureTarget("rows", cells)] * 2, num_heads=4, num_cells=30, num_blocks=1, num_steps=2)
    state.add(0, 0, 0.35, q, k, range(2))
    state.add(0, 1, 0.35, 2 * q, k, range(2))
    explicit = [torch.einsum("chd,thd->hct", s * q[1][cells], k[1]).mul(0.35).softmax(-1) for s in (1, 2)]
    torch.testing.assert_close(state.sums[1].mean()["mean"], (explicit[0] + explicit[1]) / 2)


def test_rows_of_a_few_cells_sum_over_the_selected_tokens_to_the_forward_capture(run):
    cells = [0, 5, len(run.cells) - 1]
    att = cell_attention(run, cells)
    assert len(att.rows) == run.K + 1
    for rows, fed in zip(att.rows, att.fed):
        assert rows.shape == (run.num_heads, 3, len(fed))
        torch.testing.assert_close(rows.sum(-1), torch.ones(run.num_heads, 3))
    for k in range(run.K):
        selected = run.selected_patches(k) + att.prefix  # tokens of D_k; fed are all tokens, in order
        from_rows = att.rows[k][:, :, selected].sum(-1)  # [H, 3]
        torch.testing.assert_close(from_rows, run.head_scores(k)[:, cells].float(), atol=2e-4, rtol=1e-3)
    maps = att.patch_maps(heads=[0, 1])
    assert [m.shape for m in maps] == [(37, 37)] * (run.K + 1)
    assert all(abs(m.sum() - float(r[[0, 1]].mean(dim=(0, 1))[att.prefix:].sum())) < 1e-5 for m, r in zip(maps, att.rows))
    # one block, one step: another question, another cache entry
    one = cell_attention(run, cells, blocks=[0], steps=[0])
    assert not torch.allclose(one.rows[0], att.rows[0])


def test_patch_attention_is_the_forward_capture_of_those_patches(run):
    k = 0
    selected = run.selected_patches(k).tolist()
    scores = patch_attention(run, k, selected)
    assert scores.shape == (run.num_heads, len(run.cells))
    torch.testing.assert_close(scores, run.head_scores(k).float(), atol=2e-4, rtol=1e-3)
    few = patch_attention(run, run.K, selected[:3])  # the global image's patches: its own sampling
    assert few.shape == scores.shape and float(few.max()) <= 1.0


def test_bad_questions_are_refused(run):
    with pytest.raises(ValueError, match="indices into the run's"):
        cell_attention(run, [len(run.cells)])
    with pytest.raises(ValueError, match="condition must be"):
        patch_attention(run, run.K + 1, [0])
    with pytest.raises(ValueError, match="37×37"):
        patch_attention(run, 0, [37 * 37])
    with pytest.raises(ValueError, match="nothing to explore"):
        run.entry("explore", 0)

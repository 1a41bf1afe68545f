"""viz.attention on a tiny-model run of the chair example: head grids, raw vs refined classes,
aligned labels and reverse attention."""
import numpy as np
import pytest

from fuse3d import Fuse3D
from viz import load_example
from viz.attention import (CHANGES, alignment_figure, alignment_labels, head_grid, head_values, mask_changes,
                           minmax_rows, refinement_figure, reverse_attention, reverse_figure, score_figure)


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    return load_example("chair").run(pipe, structure="true", latent_steps=2, lazy=True)


def test_mask_changes_classes():
    raw = np.array([0, 1, 1, 0], bool)
    refined = np.array([0, 1, 0, 1], bool)
    assert mask_changes(raw, refined).tolist() == [0, 1, 3, 2]
    assert [CHANGES[c] for c in mask_changes(raw, refined)] == ["outside", "kept", "removed", "added"]


def test_alignment_labels():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 0], bool)
    assert alignment_labels([a, b]).tolist() == [0, 2, 1, -1]


def test_minmax_rows():
    out = minmax_rows(np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]]))
    assert out.tolist() == [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]


def test_head_grid_tiles_every_head_in_one_scene_and_stars_chosen_heads(run):
    """16 heads, one WebGL context: every head is a tile of the same scene."""
    fig = head_grid(run, 0)
    assert len(fig.data) == run.num_heads == 16
    assert [k for k in fig.layout._props if k.startswith("scene")] == ["scene"]
    assert fig.layout.scene.camera.projection.type == "orthographic"
    starred = [a.text for a in fig.layout.scene.annotations if "★" in a.text]
    assert starred == [f"<b>head {h} ★</b>" for h in run.params.heads]
    # tiles do not overlap: each head's x–z extent is its own
    boxes = [(min(t.x), max(t.x), min(t.z), max(t.z)) for t in fig.data]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[1] < b[0] or b[1] < a[0] or a[3] < b[2] or b[3] < a[2]
    # each head min-max normalised: values span [0, 1]
    assert np.isclose(np.min(fig.data[3].intensity), 0) and np.isclose(np.max(fig.data[3].intensity), 1)


def test_head_grid_drill_down_uses_block_and_step_maps(run):
    assert np.allclose(head_values(run, 1, block=1), run.block_scores(1)[1].numpy())
    assert np.allclose(head_values(run, 1, step=0), run.step_scores(1)[0].numpy())
    with pytest.raises(ValueError, match="not both"):
        head_values(run, 0, block=0, step=0)
    fig = head_grid(run, 1, step=1, heads=[2, 4], cols=2)
    assert len(fig.data) == 2 and "step 1" in fig.layout.title.text
    shared = head_grid(run, 0, heads=[0, 1], normalize="shared")
    assert max(np.max(t.intensity) for t in shared.data) == pytest.approx(1.0)


def test_refinement_figure_classes_match_masks(run):
    fig = refinement_figure(run)
    per_local = len(CHANGES)
    assert len(fig.data) == per_local * run.K
    for k in range(run.K):
        raw, ref = run.raw_mask(k).numpy(), run.refined_mask(k).numpy()
        assert f"+{int((ref & ~raw).sum())} / −{int((raw & ~ref).sum())}" in fig.layout.annotations[k].text
        added = fig.data[k * per_local + CHANGES.index("added")]
        kept = fig.data[k * per_local + CHANGES.index("kept")]
        assert (len(added.i) > 0) == bool((ref & ~raw).any())
        assert (len(kept.i) > 0) == bool((ref & raw).any())
    assert [t.showlegend for t in fig.data[:per_local]] == [True] * per_local


def test_score_and_alignment_figures(run):
    fig = score_figure(run, 0)
    assert np.isclose(np.max(fig.data[0].intensity), 1.0)
    truth = load_example("chair").truth(run)
    fig = alignment_figure(run, truth=truth, part_names=["back", "seat"])
    assert "scene2" in fig.layout and "fuse3d-tiny-random" in fig.layout.title.text
    names = [t.name for t in fig.data if t.type == "scatter3d"]
    assert names[0].startswith("local_0 → back") and any(n.startswith("unaligned") for n in names)


def test_reverse_attention(run):
    values = reverse_attention(run)
    assert values.shape == (len(run.cells),)
    top = int(run.reverse_candidates[0])
    one = reverse_attention(run, patches=[top])
    heads = list(run.params.heads)
    assert np.allclose(one, run.reverse_map[heads][:, :, 0].float().mean(0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="candidate"):
        reverse_attention(run, patches=[-5])
    assert len(reverse_figure(run).data) == 2

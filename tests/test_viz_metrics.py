"""viz.metrics: IoU of aligned vs true voxels over head sets and thresholds."""
import numpy as np
import pytest

from fuse3d import Fuse3D
from viz import alignment_table, iou, iou_figure, load_example
from viz.metrics import mean_iou


def test_iou():
    assert iou(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_alignment_table(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    example = load_example("chair")
    run = example.run(pipe, structure="true", latent_steps=1, lazy=True)
    truth = example.truth(run)
    rows = alignment_table(run, truth, [[0, 4, 12], [3]], [0.0, 0.5])
    assert len(rows) == 2 * 2 * run.K
    row = rows[-1]
    pred = run.retune(heads=[3], threshold=0.5).aligned_voxels(run.K - 1).numpy()
    assert row["iou"] == pytest.approx(iou(pred, truth[-1]))
    assert row["recall"] == pytest.approx((pred & truth[-1]).sum() / truth[-1].sum())
    table = mean_iou(rows)
    assert table[((3,), 0.5)] == pytest.approx(np.mean([r["iou"] for r in rows if r["heads"] == (3,) and r["threshold"] == 0.5]))
    fig = iou_figure(rows, run)
    assert np.asarray(fig.data[0].z).shape == (2, 2)

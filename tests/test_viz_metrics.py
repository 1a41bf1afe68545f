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


def test_sweep_figure_draws_the_heat_map_and_outlines_the_best_setting():
    from fuse3d.sweep import Sweep, SweepResult, cases
    from viz import sweep_figure

    sweep = Sweep(cases(seeds=[1, 2]), {"heads": [[0], [1, 2]], "threshold": [0.4, 0.6]})
    iou_of = {(0, 0.4): 0.2, (0, 0.6): 0.7, (1, 0.4): 0.5, (1, 0.6): 0.1}  # head set index, threshold
    rows = [{"case": f"seed-{c}", "source": "seed", "setting": n, "heads": str(s["heads"]), "threshold": s["threshold"],
             "local": k, "iou": iou_of[(n // 2, s["threshold"])] + 0.1 * (c - 1.5), "select_all_iou": 0.3,
             "status": "ok"} for c in (1, 2) for n, s in enumerate(sweep.settings) for k in (0, 1)]
    rows.append({"case": "seed-3", "source": "seed", "status": "failed", "error": "boom"})
    result = SweepResult(sweep, rows, "some-model", 1.0)
    fig = sweep_figure(result)
    assert np.allclose(fig.data[0].z, [[0.2, 0.7], [0.5, 0.1]])  # failed rows are left out of the means
    box = fig.layout.shapes[0]
    assert (box.x0, box.y0) == (0.5, -0.5), "the best cell, heads [0] at 0.6, is outlined"
    title = fig.layout.title.text
    assert "best heads [0], threshold 0.6: 0.700" in title and "0.300" in title and "model: some-model" in title
    assert result.best() == {"setting": {"heads": [0], "threshold": 0.6}, "iou": pytest.approx(0.7)}
    with pytest.raises(ValueError, match="not a grid field"):
        sweep_figure(result, rows="strength")

import json

import numpy as np
import pytest

from fuse3d import Condition, Fuse3D
from fuse3d.data import make_example_set, voxelize
from fuse3d.metrics import alignment_table, mean_iou
from fuse3d.train.evaluate import THRESHOLDS, evaluate_example, lambda_sweep, summarize, tuning_grid, write_result


def rows(iou_by_setting, locals_=2):
    return [{"heads": h, "threshold": t, "local": k, "iou": v} for (h, t), v in iou_by_setting.items() for k in range(locals_)]


def test_summary_scores_the_setting_chosen_on_the_tuning_objects():
    default = ((0, 4, 12), 0.55)
    tune_best, test_best = ((3,), 0.4), ((7,), 0.6)
    example = {"structure": {"iou": 0.5, "f_score": 0.8, "voxels": 90, "true_voxels": 100}, "color_error": 0.1,
               "part_share": [0.2, 0.4],
               "fusion": [{"local": 0, "enhancement": True, "error": 0.1}, {"local": 0, "enhancement": False, "error": 0.4}]}
    test = [dict(example, alignment=rows({default: 0.3, tune_best: 0.5, test_best: 0.9}))]
    tune = [dict(example, alignment=rows({default: 0.3, tune_best: 0.8, test_best: 0.2}))]
    s = summarize(test, tune)
    assert s["alignment_iou_default"] == pytest.approx(0.3)
    assert s["alignment_tuned"]["heads"] == [3] and s["alignment_iou_tuned"] == pytest.approx(0.5)
    assert s["alignment_iou_oracle"] == pytest.approx(0.9) and s["alignment_iou_select_all"] == pytest.approx(0.3)
    assert s["fused_color_error_ratio"] == pytest.approx(0.25) and s["structure_voxels_ratio"] == pytest.approx(0.9)
    assert "fused_spread_plain" not in s  # rows of an older output carry no spread
    # at a model's own defaults, the default score is that setting's
    from fuse3d.params import ModelDefaults

    own = summarize(test, tune, ModelDefaults((7,), 0.6, "tuned"))
    assert own["alignment_iou_default"] == pytest.approx(0.9) and own["alignment_default"]["source"] == "tuned"


def test_tuned_defaults_are_written_into_the_model_folder(tiny_model_dir, tmp_path):
    import shutil

    from fuse3d.train.evaluate import tuned_setting, write_defaults

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    tune = [{"alignment": rows({((0, 4, 12), 0.55): 0.3, ((3,), 0.4): 0.8})}]
    setting, score = tuned_setting(tune)
    assert setting == ((3,), 0.4) and score == pytest.approx(0.8)
    write_defaults(folder, setting, score, range(910000, 910004))
    pipe = Fuse3D.from_pretrained(folder, device="cpu", progress=False)
    assert pipe.defaults.heads == (3,) and pipe.defaults.threshold == 0.4
    assert "tuning seeds 910000:910004 (mean IoU 0.800)" in pipe.defaults.source


def test_the_tuning_grid_holds_the_model_defaults_and_the_papers_when_they_exist():
    from fuse3d.params import ModelDefaults
    from fuse3d.train.evaluate import thresholds_for

    grid = tuning_grid(4, ModelDefaults((1, 2), 0.45, "x"))
    assert [1, 2] in grid and [0, 4, 12] not in grid and grid[-1] == [0, 1, 2, 3]
    assert [0, 4, 12] in tuning_grid(16) and 0.45 in thresholds_for(ModelDefaults((1,), 0.45, "x"))


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)


def test_alignment_table_scores_a_run_against_its_truth(pipe):
    ex = make_example_set(900000)
    run = pipe.run(Condition(ex["global"]["image"]), [Condition(loc["image"], loc["mask"]) for loc in ex["locals"]],
                   structure=voxelize(ex["spec"]).coords, latent_steps=2)
    truth = [run.aligned_voxels(k).numpy() for k in range(run.K)]  # the default setting's own output
    table = alignment_table(run, truth, tuning_grid(run.num_heads)[-2:], [0.55, 0.9])
    by = mean_iou(table)
    assert by[(tuple(run.params.heads), 0.55)] == 1.0
    assert len(table) == 2 * 2 * run.K and all(0 <= r["iou"] <= 1 for r in table)


@pytest.fixture(scope="module")
def evaluated(pipe):
    return evaluate_example(pipe, 900001, structure_steps=2, latent_steps=2)


def test_evaluate_example_reports_every_metric(pipe, evaluated):
    e = evaluated
    k = len(e["parts"])
    assert 0 <= e["structure"]["iou"] <= 1 and e["structure"]["true_voxels"] > 0
    assert 0 <= e["color_error"] <= 1
    assert len(e["part_share"]) == k and all(0 < v < 1 for v in e["part_share"])
    assert len(e["alignment"]) == len(tuning_grid(pipe.trellis.slat_flow.num_heads)) * len(THRESHOLDS) * k
    assert sorted((f["local"], f["enhancement"]) for f in e["fusion"]) == sorted(
        (i, flag) for i in range(k) for flag in (False, True))
    assert all(f["error"] >= f["mean_color_error"] and f["spread"] >= 0 for f in e["fusion"])
    s = summarize([e], [e])
    assert s["alignment_iou_tuned"] == s["alignment_iou_oracle"] >= s["alignment_iou_default"]
    plain_spread = np.mean([f["spread"] for f in e["fusion"] if not f["enhancement"]])
    assert s["fused_spread_plain"] == pytest.approx(plain_spread) and "fused_mean_color_error_enhanced" in s


def test_the_lambda_sweep_starts_at_the_plain_and_default_fused_errors(pipe, evaluated):
    """Strength 0 is the run without enhancement and strength 1 the default λ: the sweep's first two
    points are the evaluation's fused errors, and without the reverse alignment the errors differ."""
    e = evaluated
    sweep = lambda_sweep(pipe, [900001], [0, 1, 4], progress=False, structure_steps=2, latent_steps=2)
    plain = np.mean([f["error"] for f in e["fusion"] if not f["enhancement"]])
    default = np.mean([f["error"] for f in e["fusion"] if f["enhancement"]])
    assert sweep["strengths"] == [0.0, 1.0, 4.0] and len(sweep["no_reverse"]) == 3
    assert sweep["reverse"][:2] == pytest.approx([plain, default], abs=1e-6)
    assert sweep["no_reverse"] != pytest.approx(sweep["reverse"])
    spread = np.mean([f["spread"] for f in e["fusion"] if f["enhancement"]])
    assert sweep["spread"]["reverse"][1] == pytest.approx(spread, abs=1e-6) and len(sweep["spread"]["no_reverse"]) == 3


def test_write_result_is_json_that_reads_back(tmp_path):
    result = {"model": "m", "seconds": 1.0, "summary": {"objects": 1, "alignment_tuned": {"heads": [3]}},
              "test": [{"seed": 1, "alignment": [{"heads": [0], "iou": 0.5}]}], "tune": []}
    write_result(result, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == result
    assert '{"seed": 1, "alignment": [{"heads": [0], "iou": 0.5}]}' in text  # one line per object


def test_evaluation_masks_are_the_parts_bool_masks():
    """The evaluation builds each local condition from the part's bool mask (never a file), so the
    mask-file bug never reached its figures: each selects its part, not the whole object."""
    from fuse3d.data import ExampleSet

    ex, raw = ExampleSet.from_seed(900002), make_example_set(900002)
    for cond, loc in zip(ex.local_conditions, raw["locals"]):
        assert loc["mask"].dtype == bool and np.array_equal(cond.mask, loc["mask"])
        prep = cond.prepare()
        assert 0 < prep.selected.sum() < prep.foreground.sum()

"""fuse3d.sweep in process on the tiny model: the grid, the table against the metrics, failures,
resuming from the cache, spec files and the CLI."""
import json

import numpy as np
import pandas as pd
import pytest

from fuse3d import Fuse3D
from fuse3d.cli import main
from fuse3d.data import ExampleSet
from fuse3d.metrics import alignment_table
from fuse3d.sweep import (Case, InProcess, Sweep, SweepError, cases, expensive_fields, load_sweep_spec,
                          settings_of)

from conftest import NetworkCounter

FAST = {"latent_steps": 1, "structure_steps": 1}
GRID = {"heads": [[0], [1, 2]], "threshold": [0.4, 0.6]}


def sweep_of(*case_list, **kw):
    return Sweep(list(case_list), GRID, params=FAST, **kw)


@pytest.fixture(scope="module")
def seed_case():
    return cases(seeds=[910000])[0]


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory, seed_case):
    """One in-process sweep over a procedural case and a bundled example, on a disk cache."""
    root = tmp_path_factory.mktemp("sweep-cache")
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", cache_dir=root, progress=False)
    sweep = sweep_of(seed_case, Case("example", "chair"))
    return pipe, sweep, sweep.run(pipe, progress=False)


def test_the_grid_is_every_combination_and_is_checked_before_any_work():
    assert settings_of({"heads": [[0], [1]], "threshold": [0.4, 0.5, 0.6]})[:4] == [
        {"heads": [0], "threshold": 0.4}, {"heads": [0], "threshold": 0.5}, {"heads": [0], "threshold": 0.6},
        {"heads": [1], "threshold": 0.4}]
    with pytest.raises(SweepError, match="unknown Fuse3D parameter.*thresold"):
        settings_of({"thresold": [0.5]})
    with pytest.raises(SweepError, match="non-empty list"):
        settings_of({"threshold": []})
    with pytest.raises(SweepError, match="not valid.*threshold must be in"):
        Sweep(cases(seeds=[1]), {"threshold": [0.5, 1.5]})
    with pytest.raises(SweepError, match="no bundled example 'sofa'"):
        cases(examples=["sofa"])
    assert [c.name for c in cases(["chair"], "5:7", [])] == ["chair", "seed-5", "seed-6"]
    with pytest.raises(SweepError, match="distinct names"):
        cases(seeds=[3, 3])
    # which fields cost samplings: capture settings do, alignment settings are retunes
    assert expensive_fields(["threshold", "heads", "refine_k", "capture_blocks", "seed"]) == ["capture_blocks", "seed"]
    assert expensive_fields(["threshold", "strength"], final=True) == ["threshold", "strength"]


def test_the_table_has_a_row_per_case_setting_and_local_and_matches_the_metrics(swept, seed_case):
    pipe, sweep, result = swept
    t = result.table
    locals_per_case = t.groupby("case")["local"].nunique().to_dict()
    assert len(t) == len(sweep.settings) * sum(locals_per_case.values())
    assert set(t["status"]) == {"ok"} and result.failures.empty
    # the same IoU as the evaluation's alignment table, on a run built independently
    ex = ExampleSet.from_seed(910000)
    run = ex.run(pipe, lazy=True, **FAST)
    expected = alignment_table(run, ex.truth(run), [[0], [1, 2]], [0.4, 0.6])
    got = t[t["case"] == seed_case.name]
    for row in expected:
        match = got[(got["heads"] == json.dumps(list(row["heads"]))) & (got["threshold"] == row["threshold"])
                    & (got["local"] == row["local"])]
        assert len(match) == 1
        assert match["iou"].item() == pytest.approx(row["iou"])
        assert match["recall"].item() == pytest.approx(row["recall"])
    # sizes and scale: select-all is the part's share; the masks count what the run holds
    assert np.allclose(got.groupby("local")["select_all_iou"].first(), [t.mean() for t in ex.truth(run)])
    tuned = run.retune(heads=[1, 2], threshold=0.6)
    last = got[(got["setting"] == 3) & (got["local"] == 0)].iloc[0]
    assert last["aligned_cells"] == int(tuned.refined_mask(0).sum())
    assert last["aligned_voxels"] == int(tuned.aligned_voxels(0).sum())
    assert last["global_tokens"] == len(tuned.global_patches) and last["lambda"] == pytest.approx(tuned.lambdas[0])
    # the best setting, the scores and the heat map agree
    scores = result.scores()
    assert result.best() == {"setting": sweep.settings[int(scores["setting"][0])], "iou": scores["iou"][0]}
    assert scores["iou"][0] == t.groupby("setting")["iou"].mean().max()
    assert result.heatmap("heads", "threshold").shape == (2, 2)


def test_a_failing_case_is_reported_and_never_stops_the_sweep(tiny_model_dir, seed_case, tmp_path):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    missing = Case("spec", str(tmp_path / "nowhere" / "spec.toml"))
    result = Sweep([missing, seed_case], {"threshold": [0.5]}, params=FAST).run(pipe, progress=False)
    assert result.failures.to_dict("records") == [
        {"case": "spec", "source": "spec", "error": f"SpecError: no spec file at {missing.ref}"}]
    assert set(result.table[result.table["case"] == seed_case.name]["status"]) == {"ok"}
    written = result.save(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert meta["failures"][0]["case"] == "spec" and meta["best"]["setting"] == {"threshold": 0.5}
    assert pd.read_csv(written[0]).shape[0] == len(result.table)


class Interrupted(InProcess):
    """Ctrl-C in the middle of case ``after``'s samplings (its second flow call)."""

    def __init__(self, after: int):
        self.after = after

    def map(self, jobs, pipe):
        yield from super().map(jobs[:self.after], pipe)
        calls = []

        def ctrl_c(*_):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt

        pipe.trellis.slat_flow.register_forward_hook(ctrl_c)
        yield from super().map(jobs[self.after:], pipe)


def test_an_interrupted_sweep_resumes_from_the_cache_without_a_network_for_finished_cases(swept, tiny_model_dir,
                                                                                          tmp_path):
    _, _, done = swept
    cache = tmp_path / "cache"
    first, second = cases(seeds=[910000, 910001])
    sweep = sweep_of(first, second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(Fuse3D.from_pretrained(tiny_model_dir, device="cpu", cache_dir=cache, progress=False),
                  executor=Interrupted(after=1), progress=False)
    # a new process on the same cache: the finished case runs no network at all
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", cache_dir=cache, progress=False)
    with NetworkCounter(pipe.trellis) as calls:
        again = sweep_of(first).run(pipe, progress=False)
    assert calls.total() == 0, calls.calls
    assert set(again.table["status"]) == {"cached"}
    resumed = sweep.run(pipe, progress=False)
    assert list(resumed.table.drop_duplicates("case")["status"]) == ["cached", "ok"]
    # the finished case's rows are those an uninterrupted sweep computed
    cols = ["setting", "local", "iou", "aligned_cells", "global_tokens", "lambda"]
    a = resumed.table[resumed.table["case"] == first.name][cols].reset_index(drop=True)
    b = done.table[done.table["case"] == first.name][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_spec_files_and_the_cli(tiny_model_dir, tmp_path, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text('[cases]\nseeds = "910000:910001"\nexamples = ["chair"]\n\n'
                    '[grid]\nheads = [[0], [1, 2]]\nthreshold = [0.4, 0.6]\n\n'
                    '[params]\nlatent_steps = 1\nstructure_steps = 1\n')
    sweep, model = load_sweep_spec(spec)
    assert model is None and [c.name for c in sweep.cases] == ["chair", "seed-910000"]
    assert sweep.settings == settings_of(GRID)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--model", str(tiny_model_dir), "--cache",
                 str(tmp_path / "cache"), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("model: fuse3d-tiny-random") and "2 cases × 4 settings" in printed
    assert "grid fields that cost samplings per value: none" in printed
    table = pd.read_csv(out / "table.csv")
    assert set(table["case"]) == {"chair", "seed-910000"} and (table["status"] == "ok").all()
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["model"] == "fuse3d-tiny-random" and meta["settings"] == 4
    for text, match in (('[cases]\nseeds = "a:b"\n[grid]\nthreshold = [0.5]\n', "START:STOP"),
                        ('[grid]\nthreshold = [0.5]\n', r"\[cases\] needs"),
                        ('[cases]\nseeds = [1]\n', r"\[grid\] needs"),
                        ('[cases]\nseeds = [1]\n[grid]\nthreshold = [0.5]\n[extra]\n', "unknown keys"),
                        ('[cases\n', "not valid TOML")):
        spec.write_text(text)
        with pytest.raises(SweepError, match=match):
            load_sweep_spec(spec)


def test_final_sampling_scores_the_fused_colour_per_setting(tiny_model_dir, seed_case):
    """``final=True``: each setting's final sampling runs and the fused part's colour error is the
    evaluation's (the decoded Gaussians' voxel colours against the local image's restyled object)."""
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    sweep = Sweep([seed_case], {"strength": [0.5, 3.0]}, params=FAST, final=True)
    assert sweep.expensive == ["strength"], "with the final sampling, every setting samples"
    t = sweep.run(pipe, progress=False).table
    ex = ExampleSet.from_seed(910000)
    run = ex.run(pipe, lazy=True, strength=3.0, **FAST)
    rgb = run.gaussians.voxel_colors(len(run.structure))
    centres = (run.structure[:, 1:].numpy() + 0.5) / 64 - 0.5
    for k, truth in enumerate(ex.truth(run)):
        expected = np.abs(rgb[truth] - ex.local_target(k, centres)[truth]).mean()
        assert t[(t["setting"] == 1) & (t["local"] == k)]["fused_color_error"].item() == pytest.approx(expected)
    assert t["fused_color_error"].notna().all()
    assert not np.allclose(t[t["setting"] == 0]["lambda"], t[t["setting"] == 1]["lambda"]), "λ follows the strength"

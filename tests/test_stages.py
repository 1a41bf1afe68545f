"""The declared stage graph: keys, retune invalidation, index domains, stage results."""
import dataclasses
import warnings

import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.params import Fuse3DParams
from fuse3d.stages import STAGES, ParamView, stage_table

from conftest import two_locals

FAST = dict(structure_steps=2, latent_steps=2)




@pytest.fixture(scope="module")
def run(tiny_model_dir):
    pipe = Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False)
    g, locals_ = two_locals()
    return pipe.run(g, locals_, lazy=True, **FAST)


def downstream(names):
    """Stages that read any of ``names``, transitively."""
    out = set(names)
    while True:
        more = {s.name for s in STAGES.values() if any(i.stage in out for i in s.inputs)} - out
        if not more:
            return out
        out |= more


CHANGES = {"threshold": 0.4, "heads": [1, 2], "refine": False, "refine_k": 8, "refine_fill": 0.7, "refine_clear": 0.3,
           "refine_ties": "index", "reverse_threshold": 0.3, "reverse_alignment": False, "strength": 2.0,
           "lambda_mode": "adaptive", "lambdas": [2.0, 3.0], "global_lambda": 1.5, "enhancement": False,
           "inpainting": True, "enhancement_backend": "explicit", "seed": 3, "latent_steps": 3, "latent_cfg": 1.0,
           "sampler": "published-demo",
           "structure_steps": 3, "structure_cfg": 1.0, "capture_tokens": "foreground", "capture_strategy": "shared",
           "capture_detail": False, "capture_blocks": [0], "capture_steps": [1], "fusion": "crop", "prefix_tokens": False,
           "ablate_heads": {0: [1]}, "ablate_mode": "mean", "patch_tokens": (0, 2), "patch_blocks": [1],
           "intervene_steps": [0], "explore_cells": [0, 1], "explore_patches": {0: [1, 2]}, "explore_blocks": [0],
           "explore_steps": [1]}


def test_every_parameter_is_declared_by_some_stage_or_is_a_grouping():
    declared = {f for s in STAGES.values() for f in s.fields}
    assert set(Fuse3DParams.names()) - declared == set()
    assert set(CHANGES) | {"capture_batch"} == set(Fuse3DParams.names())


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_retune_invalidates_exactly_what_the_declarations_say(run, field):
    # the tiny model's pipeline.json equals the demo preset but for its steps, which FAST overrides
    extra = {"latent_steps": None, "structure_steps": None} if field == "sampler" else {}
    tuned = run.retune(**{field: CHANGES[field]}, **extra)
    changed = {s for s, _ in tuned.invalidated()}
    declared = {s.name for s in STAGES.values() if field in s.fields}
    assert changed, f"changing {field} changes nothing"
    assert changed <= downstream(declared), f"{field}: {changed - downstream(declared)} changed without declaring it"
    assert declared <= changed, f"{field}: {declared - changed} declare it but kept their key"
    # nothing upstream of the declaring stages moved
    upstream = set(STAGES) - downstream(declared)
    assert not changed & upstream


def test_capture_batch_groups_samplings_without_changing_keys(run):
    assert run.retune(capture_batch=1).invalidated() == []


def test_a_stage_reading_an_undeclared_parameter_is_refused():
    view = ParamView(Fuse3DParams(), STAGES["forward_alignment"])
    assert view.threshold == 0.55
    with pytest.raises(AttributeError, match="reads parameter 'strength' but does not declare it"):
        view.strength


def test_indices_are_checked_against_each_stages_domain(run):
    assert list(run.indices("capture")) == [0, 1, 2] and list(run.indices("refine")) == [0, 1]
    assert list(run.indices("final")) == [0]
    with pytest.raises(IndexError, match="local conditions 0..1"):
        run.head_scores(run.K)  # the global image is not a local: its map is run.reverse_map
    with pytest.raises(IndexError, match="conditions 0..2"):
        run.tokens(3)
    with pytest.raises(IndexError, match="index 0 only"):
        run["final", 1]
    with pytest.raises(KeyError, match="unknown stage 'captur'"):
        run["captur", 0]


def test_stage_results_name_their_tensors_and_shapes(run):
    r = run["capture", 0]
    assert torch.equal(r["mean"], run.head_scores(0))
    assert "capture[0]" in repr(r) and f"mean: [{run.num_heads}, {len(run.cells)}] float32" in repr(r)
    with pytest.raises(KeyError, match="holds mean"):
        r["nope"]
    assert run["structure"]["coords"].shape[1] == 4


def test_every_stage_shows_in_stages(run):
    rows = run.stages()
    assert {r["stage"] for r in rows} == set(STAGES) and "neighbourhoods" in {r["stage"] for r in rows}
    assert len(rows) == sum(len(run.indices(s)) for s in STAGES)


def test_the_old_schedule_keyword_still_works_with_a_warning(run):
    with pytest.warns(DeprecationWarning, match="'schedule' is now 'capture_strategy'"):
        tuned = run.retune(schedule="shared")
    assert tuned.params.capture_strategy == "shared"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="not both"):
            run.retune(schedule="shared", capture_strategy="separate")


def test_the_architecture_page_holds_the_generated_stage_table():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    assert stage_table() in page, "regenerate the table: python -c 'from fuse3d.stages import stage_table; print(stage_table())'"


def test_declarations_are_complete():
    for s in STAGES.values():
        assert dataclasses.is_dataclass(s) and s.doc
        for inp in s.inputs:
            assert inp.stage in STAGES, f"{s.name} reads unknown stage {inp.stage}"

"""The bundled default model: fuse3d's small model trained on procedural objects (issue 6)."""
import numpy as np
import pytest
import torch

from fuse3d.bundled import BUNDLED, SMALL_MODEL_NAME, default_model_path
from fuse3d.pipeline import Fuse3D
from fuse3d.data import ExampleSet
from fuse3d.metrics import voxel_f_score
from fuse3d.trellis import load_pipeline
from viz.examples import demo_structure, load_example
from viz.style import is_random_model, is_small_model, is_toy_model, model_label

HELD_OUT = tuple(range(920000, 920008))  # never trained on (training seeds: 100 000 up), nor evaluated on


@pytest.fixture(scope="module")
def small():
    return Fuse3D.from_pretrained(progress=False)


def test_the_default_is_the_bundled_small_model_within_the_size_budget(small):
    path = default_model_path()
    assert path == BUNDLED / SMALL_MODEL_NAME
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) <= 20 * 2**20
    assert small.model_name == SMALL_MODEL_NAME and "procedural" in small.trellis.description


def test_labels_and_demo_structure_say_what_the_small_model_is(small):
    assert is_small_model(small) and is_toy_model(small) and not is_random_model(small)
    assert model_label(small).startswith("model: fuse3d-small (small model trained on procedural objects")
    example = load_example("chair")
    assert torch.equal(demo_structure(small, example), example.structure)  # sampled shapes are rough


def _structure_f_score(pipe, seeds) -> float:
    scores = []
    for seed in seeds:
        ex = ExampleSet.from_seed(seed)
        cond = pipe.trellis.encode_images([ex.global_condition.image])
        pred = pipe.trellis.sample_structure(cond, seed=0, progress=False)[:, 1:].numpy()
        scores.append(voxel_f_score(pred, ex.voxels.coords[:, 1:])["f_score"])
    return float(np.mean(scores))


def test_trained_structure_follows_the_image_unlike_random_weights(small, tiny_model_dir):
    """F-score at one voxel of the structure sampled from one image of a held-out object.

    Measured when the model was bundled (2026-12-07, seventh session, 36 440 structure-flow steps):
    0.608 on these 8 objects, where the random model scores 0.08; 0.63 on the 14 evaluation objects of
    docs/evaluation.md. (The previous bundled models scored 0.614 at 15 379 steps (0.58 on the 14),
    0.60 at 11 938 and 8 106 steps, 0.48 and 0.32 here.)"""
    trained = _structure_f_score(small, HELD_OUT)
    random = _structure_f_score(Fuse3D.from_pretrained(tiny_model_dir, progress=False), HELD_OUT)
    assert trained > 0.52 and trained > 5 * random, (trained, random)


def test_bundled_folder_is_the_trellis_format():
    pipe = load_pipeline(BUNDLED / SMALL_MODEL_NAME, progress=False)  # raises if a network is missing
    for name in ("ss_flow", "ss_decoder", "slat_flow", "slat_decoder_gs", "slat_decoder_mesh"):
        assert sum(p.numel() for p in getattr(pipe, name).parameters()) > 0, name
    assert pipe.image_encoder.img_size == 518 and pipe.ss_sampler_params["cfg_strength"] == 3.0


def test_forward_alignment_finds_the_parts_better_than_selecting_everything(small):
    """The method visibly works on the bundled model: on held-out objects (true structure), the
    aligned voxels at the model's own defaults match each local image's part better than selecting
    every voxel does. Measured when bundled (2026-12-07, eighth session, 20 600 latent-flow steps,
    head 0 at 0.6), at latent_steps=6 on these two objects (4 parts): mean IoU 0.74 against 0.46 for
    select-all (0.73 against 0.34 on the 14 evaluation objects of docs/evaluation.md). (The previous
    bundled models scored 0.74 at 15 379 latent-flow steps, 0.69, 0.73, 0.56 and the select-all
    level here.)"""
    from fuse3d.metrics import alignment_table

    ious, shares = [], []
    for seed in HELD_OUT[:2]:
        ex = ExampleSet.from_seed(seed)
        run = small.run(ex.global_condition, ex.local_conditions, seed=0, structure=ex.voxels.coords,
                        latent_steps=6, lazy=True)
        truth = ex.truth()
        rows = alignment_table(run, truth, [run.params.heads], [run.params.threshold])
        ious += [r["iou"] for r in rows]
        shares += [float(t.mean()) for t in truth]
    assert np.mean(ious) > np.mean(shares) + 0.15, (ious, shares)

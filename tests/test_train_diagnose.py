"""The structure diagnosis (``python -m fuse3d.train.diagnose``) on the tiny model."""
import numpy as np
import pytest
import torch
from PIL import Image

from fuse3d.data import make_example_set, render, voxelize
from fuse3d.metrics import voxel_extents
from fuse3d.train import diagnose as D
from fuse3d.train import train as T
from fuse3d.train.data import make_object
from fuse3d.trellis.pipeline import load_pipeline
from fuse3d.trellis.preprocess import preprocess_image


def test_grid_parses_and_says_what_it_takes():
    assert D.parse_grid("12/3,25/7.5") == [(12, 3.0), (25, 7.5)]
    with pytest.raises(ValueError, match="STEPS/CFG pairs"):
        D.parse_grid("12:3")
    assert D.parse_tolerances("2,3") == [2.0, 3.0]
    for bad in ("2;3", "-1"):
        with pytest.raises(ValueError, match="voxel distances"):
            D.parse_tolerances(bad)


def test_the_autoencoder_is_read_from_a_checkpoint_folder_of_any_name(tmp_path):
    trainer = T.Trainer(T.TrainConfig(work=str(tmp_path / "work"), architecture="tiny"), device="cpu")
    trainer.save()
    kept = tmp_path / "kept"  # a copy, as checkpoints/…/latest is, not named ckpt
    trainer.ckpt.rename(kept)
    enc, dec = D.load_structure_autoencoder(str(kept))
    for ours, theirs in ((enc, trainer.nets["ss_encoder"]), (dec, trainer.nets["ss_decoder"])):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b.half().float())  # stored in fp16
    true = np.asarray(voxelize(make_example_set(910000)["spec"]).coords)[:, 1:].astype(np.int64)
    assert 0.0 <= D.autoencoder_f_score(enc, dec, true) <= 1.0
    with pytest.raises(FileNotFoundError, match="no state.json"):
        D.load_structure_autoencoder(str(tmp_path))


def test_diagnose_scores_each_view_and_setting_of_each_seed(tiny_model_dir):
    trellis = load_pipeline(tiny_model_dir, device="cpu", progress=False)
    result = D.diagnose(trellis, [910000], views=2, grid=[(2, 0.0)], progress=False, tolerances=[1, 3])
    row = result["per_seed"][0]
    assert row["seed"] == 910000 and row["kind"] == make_example_set(910000)["kind"]
    assert len(row["given_views"]) == 1 and len(row["new_views"]) == 2 and set(row["sampler"]) == {"2/0"}
    assert all(0.0 <= f <= 1.0 for f in [*row["given_views"], *row["new_views"], row["sampler"]["2/0"]])
    # the given view's score is the structure of the example's global view, with the model's own settings
    ex = make_example_set(910000)
    true = np.asarray(voxelize(ex["spec"]).coords)[:, 1:].astype(np.int64)
    again = D._f(D.structure_from_view(trellis, ex["spec"], ex["global"]["view"]), true)
    assert row["given_views"] == [again]
    # a wider matching distance scores the same structure; at one voxel it is the plain F-score
    wide = row["given_views_by_tolerance"]
    assert wide["1"] == [again] and wide["3"][0] >= again
    assert wide["3"] == [D._f(D.structure_from_view(trellis, ex["spec"], ex["global"]["view"]), true, 3)]
    assert result["summary"]["given_views_by_tolerance"] == {"1": again, "3": wide["3"][0]}
    # extents: the true object's and the given view's structure's, and their mean absolute difference
    assert row["extents"]["true"] == voxel_extents(true)
    sampled = voxel_extents(D.structure_from_view(trellis, ex["spec"], ex["global"]["view"])[:, 1:].numpy())
    assert row["extents"]["given_views"] == [sampled]
    assert result["summary"]["extent_error_voxels"] == pytest.approx(np.abs(np.subtract(sampled, voxel_extents(true))).mean())
    assert result["summary"]["new_views"] == pytest.approx(np.mean(row["new_views"]))
    assert "autoencoder" not in result["summary"]


def test_training_objects_are_the_ones_the_trainer_renders():
    """``--objects training`` scores the object and views make_object trains on (same voxels, same renders)."""
    obj = make_object(100003, views=2, fine_samples=64, render_size=160)
    kind, spec, views = D.diagnosed_object(100003, "training")
    assert np.array_equal(np.asarray(voxelize(spec).coords)[:, 1:], obj.coords)
    assert len(views) == 2
    image = preprocess_image(Image.fromarray(render(spec, views[1], 160).rgba, "RGBA")).image
    assert np.array_equal(np.asarray(image), obj.images[1])
    with pytest.raises(ValueError, match="'examples' or 'training'"):
        D.diagnosed_object(100003, "test")

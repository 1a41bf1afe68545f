"""The paper's CLIP scores (fuse3d.clip_scores) on a tiny random CLIP the project writes itself."""

import json

import numpy as np
import pytest
import torch

from fuse3d import Fuse3D
from fuse3d.clip_scores import (ClipWeightsError, asset_renders, clip_scores, condition_region, load_clip, region_crop,
                                resolve_clip_folder, write_tiny_clip)
from fuse3d.data import View

pytest.importorskip("open_clip")  # the [metrics] extra; installed by the test command (dev extra)
VIEWS = (View(0.0, 20.0), View(180.0, 20.0))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(tiny_clip_dir)


@pytest.fixture(scope="module")
def run(tiny_model_dir, conditions):
    g, locals_ = conditions
    return Fuse3D.from_pretrained(tiny_model_dir, device="cpu", progress=False).run(
        g, locals_, seed=0, structure_steps=2, latent_steps=2)


def test_the_written_checkpoint_loads_back_with_the_same_weights(tiny_clip_dir, clip):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_clip_dir / "open_clip_model.safetensors"))
    state = clip.model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)


def test_weights_are_never_downloaded_and_never_unpickled(tmp_path, tiny_clip_dir, monkeypatch):
    monkeypatch.delenv("FUSE3D_CLIP", raising=False)
    with pytest.raises(ClipWeightsError, match="never downloads"):
        resolve_clip_folder()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ClipWeightsError, match="not in the local Hugging Face cache"):
        resolve_clip_folder("timm/vit_large_patch14_clip_224.openai")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    (pickled / "open_clip_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ClipWeightsError, match="pickle"):
        resolve_clip_folder(pickled)
    with pytest.raises(ClipWeightsError, match="open_clip_config.json"):
        resolve_clip_folder(tmp_path)
    monkeypatch.setenv("FUSE3D_CLIP", str(tiny_clip_dir))
    assert resolve_clip_folder() == tiny_clip_dir


def test_similarity_is_a_cosine(clip, conditions):
    g, (top, _) = conditions
    a, b = condition_region(g), condition_region(top)
    assert clip.similarity([a], a)[0] == pytest.approx(1.0, abs=1e-5)
    s = clip.similarity([a, b], "a red box")
    assert all(-1.0 <= v <= 1.0 for v in s) and s[0] != s[1]


def test_a_region_crop_keeps_only_the_region_and_centres_it():
    rgb = np.full((40, 60, 3), 200, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[5:15, 50:60] = True  # touches the right border
    im = np.asarray(region_crop(rgb, mask, margin=0.1))
    assert im.shape == (12, 12, 3)
    assert (im > 0).any(-1).sum() == 100  # the 10×10 region, nothing else
    ys, xs = np.nonzero((im > 0).any(-1))
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (1, 10, 1, 10)
    with pytest.raises(ValueError, match="empty"):
        region_crop(rgb, np.zeros_like(mask))


def test_region_renders_show_exactly_the_aligned_voxels(run):
    coords = run.structure.numpy()
    aligned = run.refined_mask(0)[run.voxel_cell].numpy()
    colors = np.zeros((len(coords), 3), np.float32)
    colors[aligned] = 1.0  # white region, black rest
    for rgb, region, whole in asset_renders(coords, colors, aligned, VIEWS, size=96):
        assert region.any() and (whole & ~region).any()
        assert (rgb[region].max(-1) > 0).all() and (rgb[whole & ~region] == 0).all()


def test_scores_of_a_run_are_the_mean_over_the_views_that_show_each_region(run, clip):
    scores = clip_scores(run, clip, views=VIEWS)
    d = scores.as_dict()
    assert len(d["region_clip"]) == run.K and d["views"] == 2 and d["clip_model"] == clip.source
    json.dumps(d)
    # recomputed by hand for the first region
    coords = run.structure.numpy()
    colors = run.gaussians.voxel_colors(len(coords))
    aligned = run.refined_mask(0)[run.voxel_cell].numpy()
    crops = [region_crop(rgb, m) for rgb, m, _ in asset_renders(coords, colors, aligned, VIEWS)]
    expected = float(np.mean(clip.similarity(crops, condition_region(run.local_conditions[0]))))
    assert scores.region[0] == pytest.approx(expected, abs=1e-6)
    # against texts instead of images
    texts = clip_scores(run, clip, region_texts=["a green top", None], global_text="a red box", views=VIEWS)
    assert texts.region[0] != pytest.approx(scores.region[0]) and texts.region[1] == pytest.approx(scores.region[1])
    assert texts.global_reference == "text: a red box" and texts.global_ != pytest.approx(scores.global_)
    with pytest.raises(ValueError, match="one entry per local image"):
        clip_scores(run, clip, region_texts=["only one"], views=VIEWS)

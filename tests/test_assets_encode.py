"""A given asset as a structured latent (fuse3d.assets.encode) and Fuse3D.edit on it."""

import numpy as np
import pytest
import torch
import trimesh

from fuse3d import Fuse3D
from fuse3d.assets import EncodedAsset, Gaussians, Mesh, SurfaceVoxels, encode_asset
from fuse3d.assets.encode import project_patch_features, project_points, sphere_views
from fuse3d.data import View, random_object, voxelize
from fuse3d.metrics import part_color_error
from fuse3d.trellis.checkpoint import CheckpointError
from fuse3d.trellis.sparse import SparseTensor

from test_pipeline import FAST, fuse3d, run  # noqa: F401  (the tiny model and its two-local run)


def cube_mesh(color=(0.9, 0.2, 0.1)) -> Mesh:
    """A unit cube as 12 triangles with one vertex colour."""
    v = np.array([[x, y, z] for x in (-0.3, 0.3) for y in (-0.3, 0.3) for z in (-0.3, 0.3)], np.float32)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int64)
    return Mesh(v, f, np.tile(np.array(color, np.float32), (8, 1)))


# ---------------------------------------------------------------------------- surface voxels
def test_a_procedural_object_keeps_its_voxels_colours_and_unit_normals():
    spec = random_object(900003)
    vox = voxelize(spec)
    s = SurfaceVoxels.from_spec(spec)
    assert torch.equal(s.coords, torch.from_numpy(vox.coords.astype(np.int32)))
    np.testing.assert_allclose(s.color, vox.color)
    np.testing.assert_allclose(np.linalg.norm(s.normal, axis=1), 1.0, atol=1e-5)


def test_a_coloured_mesh_gives_its_colour_and_outward_normals_per_voxel():
    s = SurfaceVoxels.from_mesh(cube_mesh(), normalize=False)
    np.testing.assert_allclose(s.color, np.tile([0.9, 0.2, 0.1], (len(s), 1)), atol=1e-5)
    centres = (s.coords[:, 1:].numpy() + 0.5) / 64 - 0.5
    outward = (s.normal * centres).sum(1)
    assert (outward > 0).mean() > 0.99  # normals point away from the cube's centre
    side = np.abs(centres).max(1)
    assert np.all(np.abs(side - 0.3) < 1.5 / 64)  # only voxels on the surface


def test_meshes_without_colours_or_faces_are_refused():
    m = cube_mesh()
    with pytest.raises(ValueError, match="no colours"):
        SurfaceVoxels.from_mesh(trimesh.Trimesh(m.vertices, m.faces))
    with pytest.raises(ValueError, match="at least one surface voxel"):
        SurfaceVoxels(torch.zeros(0, 4, dtype=torch.int32), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))


# ---------------------------------------------------------------------------- projected patch features
def test_views_cover_the_sphere_and_project_the_origin_to_the_image_centre():
    views = sphere_views(50)
    dirs = np.array([v.basis()[0] for v in views])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    assert np.abs(dirs.mean(0)).max() < 0.05  # spread evenly
    for v in views[:5]:
        np.testing.assert_allclose(project_points(np.zeros((1, 3)), v), 0.0, atol=1e-9)
    with pytest.raises(ValueError):
        sphere_views(0)


def test_projected_features_are_the_mean_over_views_of_the_feature_under_each_point():
    views = [View(0.0, 0.0, 2.0, 40.0), View(90.0, 0.0, 2.0, 40.0)]
    g = 4
    tokens = torch.stack([torch.full((g * g, 2), 1.0), torch.full((g * g, 2), 3.0)])  # constant per view
    tokens[1, :, 1] = torch.arange(g * g, dtype=torch.float32)  # view 2, channel 1: the patch index
    out = project_patch_features(np.zeros((1, 3)), views, tokens)
    centre = tokens[1, :, 1].view(g, g)[g // 2 - 1:g // 2 + 1, g // 2 - 1:g // 2 + 1].mean()  # bilinear at the middle
    torch.testing.assert_close(out, torch.tensor([[2.0, (1.0 + float(centre)) / 2]]))
    with pytest.raises(ValueError):
        project_patch_features(np.zeros((1, 3)), views[:1], tokens)


# ---------------------------------------------------------------------------- encoding
def test_encoding_reads_the_input_its_slat_encoder_declares(fuse3d, tiny_model_dir):
    spec = random_object(900001)
    a = fuse3d.encode(spec, views=3)
    n = len(voxelize(spec).coords)
    assert isinstance(a, EncodedAsset) and a.latent.shape == (n, fuse3d.trellis.slat_flow.in_channels)
    assert "patch features averaged over 3 views" in a.source
    assert torch.isfinite(a.latent).all()
    # the same voxels with other colours: other features, another latent
    recoloured = SurfaceVoxels(a.voxels.coords, 1 - a.voxels.color, a.voxels.normal)
    assert not torch.allclose(fuse3d.encode(recoloured, views=3).latent, a.latent)


def test_a_model_without_a_slat_encoder_says_so(tmp_path, tiny_model_dir):
    import json
    import shutil

    folder = tmp_path / "no_encoder"
    shutil.copytree(tiny_model_dir, folder)
    doc = json.loads((folder / "pipeline.json").read_text())
    (folder / doc["fuse3d"]["slat_encoder"]).with_suffix(".safetensors").unlink()
    pipe = Fuse3D.from_pretrained(folder, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="no SLAT encoder"):
        pipe.encode(cube_mesh())


# ---------------------------------------------------------------------------- editing
def test_an_edit_keeps_the_latent_outside_its_aligned_region_exactly(fuse3d, run, conditions):
    _, (top, bottom) = conditions
    edit = fuse3d.edit(run, [top], seed=1, **FAST)
    assert torch.equal(edit.structure, run.structure)
    aligned = edit.refined_mask(0)[edit.voxel_cell]
    assert 0 < int(aligned.sum()) < len(aligned)
    before, after = run.final.feats, edit.final.feats
    assert torch.equal(after[~aligned], before[~aligned])
    assert not torch.allclose(after[aligned], before[aligned])
    assert edit.summary()["edits"].startswith("run ")

    # edits chain: the second keeps the first's result outside its own region
    again = fuse3d.edit(edit, [bottom], seed=2, **FAST)
    kept = ~again.refined_mask(0)[again.voxel_cell]
    assert torch.equal(again.final.feats[kept], after[kept])


def test_an_edit_of_an_encoded_asset_keeps_the_encoded_latent(fuse3d, conditions):
    _, (top, _) = conditions
    asset = fuse3d.encode(random_object(900002), views=2)
    edit = fuse3d.edit(asset, [top], **FAST)
    kept = ~edit.refined_mask(0)[edit.voxel_cell]
    order = torch.argsort((asset.coords[:, 1:].long() * torch.tensor([4096, 64, 1])).sum(1))
    assert torch.equal(edit.structure, asset.coords[order])
    assert torch.equal(edit.final.feats[kept], asset.latent[order][kept])
    assert edit.global_condition.name.endswith("(render)")
    # retuning keeps the asset being edited
    assert fuse3d.edit(asset, [top], lazy=True, **FAST).retune(strength=2.0).base is not None


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(inpainting=False), ValueError, "inpainting is always on"),
    (dict(structure=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "keeps the structure"),
])
def test_bad_edits_fail_before_any_work(fuse3d, run, conditions, kwargs, error, match):
    with pytest.raises(error, match=match):
        fuse3d.edit(run, conditions[1][:1], **kwargs)


def test_an_edit_needs_a_local_condition(fuse3d, run):
    from fuse3d.conditions import ConditionError

    with pytest.raises(ConditionError, match="at least one local condition"):
        fuse3d.edit(run, [])


# ---------------------------------------------------------------------------- the bundled model
def test_the_bundled_model_decodes_an_encoded_object_in_its_colours():
    """Encode → decode (Gaussians) on held-out procedural objects reproduces their colours: per-part
    colour error 0.132 when bundled (2026-12-07; 0.16, 0.14, 0.10 on these objects), against about
    0.26 for a uniform grey."""
    pipe = Fuse3D.from_pretrained(device="cpu", progress=False)
    dec = pipe.trellis.slat_decoder_gs
    errors = []
    for seed in (920000, 920001, 920002):
        spec = random_object(seed)
        vox = voxelize(spec)
        a = pipe.encode(spec)
        rgb = Gaussians.from_decoder_output(dec, dec.decode_features(SparseTensor(a.latent, a.coords))).voxel_colors(len(a))
        errors.append(part_color_error(rgb, vox.color, vox.part))
    assert float(np.mean(errors)) < ENCODE_DECODE_BOUND, errors


ENCODE_DECODE_BOUND = 0.15

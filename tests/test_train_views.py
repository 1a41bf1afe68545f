"""Encoder pre-training data: renders with per-patch targets that follow TRELLIS's crop."""
import numpy as np
import pytest

from fuse3d.data import KINDS, random_object
from fuse3d.data import group_name
from fuse3d.method.fusion import foreground_patches
from fuse3d.train.views import (NUM_CLASSES, PART_CATEGORIES, load_views, object_views, part_category, save_views,
                                surface_maps)


def test_every_template_part_has_a_category():
    groups = {group_name(p.name) for k in KINDS for s in range(12) for p in random_object(s, kind=k).parts}
    assert groups <= set(PART_CATEGORIES)
    assert part_category("leg_3") == part_category("leg") == PART_CATEGORIES.index("leg") + 1
    with pytest.raises(KeyError, match="no category"):
        part_category("wing")


@pytest.fixture(scope="module")
def views():
    return object_views(100003, views=2, size=256)


def test_targets_are_shares_and_means_over_the_patch_pixels(views):
    for v in views:
        assert v.image.shape == (518, 518, 3) and v.part.shape == (37, 37, NUM_CLASSES)
        assert np.allclose(v.part.sum(-1), 1, atol=1e-5)
        assert np.allclose(v.coverage, 1 - v.part[..., 0], atol=1e-5), "coverage = 1 − background share"
        fg = v.coverage > 0
        assert np.abs(v.position[fg]).max() <= 1.0 and np.all(v.albedo[~fg] == 0)
        full = v.coverage == 1
        assert np.allclose(np.linalg.norm(v.normal[full], axis=-1).mean(), 1, atol=0.1)
        # the targets' object patches are the image's non-black patches (the same crop)
        img_fg = foreground_patches(v.image)
        assert (fg & img_fg).sum() / (fg | img_fg).sum() > 0.9
        assert abs(np.linalg.norm(v.eye) - 1) < 1e-5 and KINDS[v.kind] == "table"


def test_surface_points_reproduce_the_rendered_depth():
    from fuse3d.data import View, render

    spec = random_object(5)
    r = render(spec, View(30, 20), 64)
    hit, albedo, normal, pos = surface_maps(spec, r)
    eye, fwd, _, _ = r.view.basis()
    depth = (pos - eye) @ fwd
    assert np.allclose(depth[hit], r.depth[hit], atol=1e-4)
    sdf, _ = spec.evaluate(pos[hit].astype(np.float64))
    assert np.abs(sdf).max() < 2e-3, "the points lie on the surface"
    assert np.all(albedo[hit] >= 0) and np.allclose(np.linalg.norm(normal[hit], axis=-1), 1, atol=1e-4)


def test_views_round_trip(views, tmp_path):
    save_views(tmp_path / "v.safetensors", views)
    back = load_views(tmp_path / "v.safetensors")
    for a, b in zip(views, back):
        for name in ("image", "coverage", "part", "albedo", "normal", "position", "eye"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert (a.seed, a.kind) == (b.seed, b.kind)

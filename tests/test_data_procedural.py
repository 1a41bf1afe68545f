"""Procedural part-labelled objects: templates, voxelisation, rendering, Fuse3D condition images."""
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fuse3d.data import (
    KINDS,
    ObjectSpec,
    Pattern,
    View,
    VoxelObject,
    fit_view,
    load_example_set,
    make_example_set,
    part_mask,
    random_object,
    random_view,
    recolor_part,
    render,
    save_example_set,
    voxelize,
)
from fuse3d.data.colors import _srgb_to_lab

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def example():
    return make_example_set(11)


# ---------------------------------------------------------------------------------------------- specs


def test_random_object_is_deterministic_and_leaves_global_rng_alone():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    for kind in KINDS:
        assert random_object(5, kind) == random_object(5, kind)
        assert random_object(np.random.default_rng(5), kind) == random_object(np.random.default_rng(5), kind)
        assert random_object(5, kind) != random_object(6, kind)
    assert random_object(9) == random_object(9)
    assert np.array_equal(np.random.get_state()[1], state)
    v1, v2 = voxelize(random_object(3, "robot")), voxelize(random_object(3, "robot"))
    assert np.array_equal(v1.coords, v2.coords) and np.array_equal(v1.part, v2.part)
    assert np.array_equal(v1.color, v2.color)
    assert random_view(4) == random_view(4) != random_view(5)


def test_unknown_kind_and_part_raise():
    with pytest.raises(ValueError):
        random_object(0, "spaceship")
    spec = random_object(0, "mug")
    with pytest.raises(KeyError):
        spec.index("wing")
    with pytest.raises(KeyError):
        recolor_part(spec, "wing", (1, 0, 0))


@pytest.mark.parametrize("kind", KINDS)
def test_template_fits_the_cube_and_has_distinct_colours(kind):
    for seed in SEEDS:
        spec = random_object(seed, kind)
        assert spec.kind == kind and spec.seed == seed
        lo, hi = spec.bounds()
        assert lo.min() >= -0.45 and hi.max() <= 0.45
        assert 0.79 <= (hi - lo).max() <= 0.89
        assert np.allclose((lo + hi) / 2, 0, atol=1e-9)
        assert 2 <= len(spec.parts) <= 12
        lab = _srgb_to_lab(np.array([p.color for p in spec.parts]))
        dist = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(len(lab)) * 1e9
        assert dist.min() > 25  # clearly distinct (CIE76)


def test_spec_dict_roundtrip_is_json_and_toml_friendly():
    for kind in KINDS:
        spec = random_object(1, kind, pattern_prob=1.0)
        d = spec.to_dict()
        text = json.dumps(d)
        assert "null" not in text
        assert ObjectSpec.from_dict(json.loads(text)) == spec


def test_shared_group_colours_option():
    spec = random_object(2, "chair", distinct_colors_per_part=False)
    legs = {p.color for p in spec.parts if p.name.startswith("leg_")}
    assert len(legs) == 1
    assert spec.parts[spec.index("seat")].color not in legs


# ---------------------------------------------------------------------------------------------- voxels


def _brute_force_surface(spec, R=64):
    c = (np.arange(R) + 0.5) / R - 0.5
    pts = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
    d, lab = spec.evaluate(pts)
    occ = d <= 0
    interior = ndimage.binary_erosion(occ, ndimage.generate_binary_structure(3, 1), border_value=0)
    return occ & ~interior, lab


@pytest.mark.parametrize("kind", KINDS)
def test_voxelize_surface_shell(kind):
    for seed in SEEDS:
        spec = random_object(seed, kind)
        vox = voxelize(spec)
        c = vox.coords
        assert c.dtype == np.int32 and c.ndim == 2 and c.shape[1] == 4 and len(c) > 500
        assert np.all(c[:, 0] == 0)
        assert c[:, 1:].min() >= 0 and c[:, 1:].max() < 64
        key = (c[:, 1].astype(np.int64) * 64 + c[:, 2]) * 64 + c[:, 3]
        assert np.all(np.diff(key) > 0)  # sorted by (x, y, z), no duplicates
        assert vox.part.shape == (len(c),) and vox.color.shape == (len(c), 3)
        assert vox.part_names == spec.part_names
        # every part is on the surface; one 26-connected shell
        assert set(np.unique(vox.part)) == set(range(len(spec.parts)))
        occ = vox.occupancy()
        _, n = ndimage.label(occ, structure=np.ones((3, 3, 3)))
        assert n == 1
        # surface only: no voxel with all 6 neighbours present
        pad = np.pad(occ, 1)
        full = (pad[:-2, 1:-1, 1:-1] & pad[2:, 1:-1, 1:-1] & pad[1:-1, :-2, 1:-1] & pad[1:-1, 2:, 1:-1]
                & pad[1:-1, 1:-1, :-2] & pad[1:-1, 1:-1, 2:])
        assert not np.any(full & occ)
        # bounding-box culling loses nothing: same voxels and labels as evaluating the whole grid
        surf, lab = _brute_force_surface(spec)
        assert np.array_equal(occ, surf)
        assert np.array_equal(vox.part, lab[c[:, 1], c[:, 2], c[:, 3]])


def test_voxel_colours_follow_parts_and_patterns():
    spec = random_object(4, "car", pattern_prob=1.0)
    vox = voxelize(spec)
    patterned = 0
    for k, p in enumerate(spec.parts):
        cols = np.unique(vox.color[vox.part == k].round(4), axis=0)
        allowed = {tuple(np.round(p.color, 4))}
        if p.pattern is not None:
            allowed.add(tuple(np.round(p.pattern.color, 4)))
            patterned += len(cols) == 2
        assert {tuple(c) for c in cols} <= {tuple(np.float32(a).round(4)) for a in allowed}
    assert patterned >= 1


def test_voxelize_supersampled_is_close_to_centre_sampling():
    spec = random_object(0, "lamp")
    a, b = voxelize(spec).occupancy(), voxelize(spec, supersample=2).occupancy()
    assert abs(int(a.sum()) - int(b.sum())) < 0.15 * a.sum()
    assert (a & b).sum() > 0.6 * a.sum()


# ---------------------------------------------------------------------------------------------- renders


def _check_render(r, size, view):
    alpha, pid = r.rgba[..., 3], r.part_id
    assert r.rgba.dtype == np.uint8 and r.rgba.shape == (size, size, 4)
    assert pid.dtype == np.int16 and pid.shape == (size, size)
    assert np.array_equal(alpha > 0, pid >= 0)
    assert np.all(r.rgba[alpha == 0, :3] == 0)
    hit = pid >= 0
    assert hit.mean() > 0.02  # visible
    rows, cols = np.nonzero(hit)
    assert abs(rows.mean() - size / 2) < 0.2 * size and abs(cols.mean() - size / 2) < 0.2 * size  # centred
    assert not hit[0].any() and not hit[-1].any() and not hit[:, 0].any() and not hit[:, -1].any()
    assert np.all(np.isfinite(r.depth[hit])) and np.all(np.isinf(r.depth[~hit]))
    assert np.all(np.abs(r.depth[hit] - view.distance) < 0.8)


@pytest.mark.parametrize("kind", KINDS)
def test_render_random_views(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    spec = random_object(7, kind)
    for _ in range(2):
        view = random_view(rng)
        assert 0 <= view.pitch_deg <= 45
        r = render(spec, view, 96)
        _check_render(r, 96, view)
        assert np.all(r.rgba[r.part_id >= 0, 3] == 255)
        assert r.part_names == spec.part_names


def test_render_supersampled_and_orthographic():
    spec = random_object(3, "table")
    view = View(30, 20)
    r = render(spec, view, 80, supersample=2)
    _check_render(r, 80, view)
    partial = (r.rgba[..., 3] > 0) & (r.rgba[..., 3] < 255)
    assert partial.sum() > 10  # anti-aliased edge
    plain = render(spec, view, 80)
    assert np.mean((r.part_id >= 0) != (plain.part_id >= 0)) < 0.03
    o = render(spec, View(30, 20, ortho=True), 80)
    _check_render(o, 80, view)


def test_rendered_part_colour_is_its_colour_shaded():
    spec = random_object(2, "robot", pattern_prob=0.0)
    r = render(spec, View(35, 20, fov_deg=30), 128)
    checked = 0
    for k, p in enumerate(spec.parts):
        m = r.part_id == k
        if m.sum() < 20:
            continue
        rgb = r.rgba[m, :3].astype(float) / 255
        base = np.asarray(p.color)
        cos = rgb @ base / (np.linalg.norm(rgb, axis=1) * np.linalg.norm(base) + 1e-9)
        assert np.median(cos) > 0.995
        scale = np.linalg.norm(rgb, axis=1) / np.linalg.norm(base)
        assert 0.25 < np.median(scale) <= 1.01
        checked += 1
    assert checked >= 4


def test_voxel_render_matches_spec_render():
    spec = random_object(1, "creature")
    vox = voxelize(spec)
    view = View(50, 25)
    a, b = render(spec, view, 96), render(vox, view, 96)
    _check_render(b, 96, view)
    sa, sb = a.part_id >= 0, b.part_id >= 0
    assert (sa & sb).sum() / (sa | sb).sum() > 0.8
    both = sa & sb
    assert np.mean(a.part_id[both] == b.part_id[both]) > 0.85
    bare = render(VoxelObject.from_coords(vox.coords), view, 64)
    assert bare.part_names == ["object"] and (bare.part_id >= 0).sum() > 100


def test_fit_view_frames_the_object():
    spec = random_object(0, "car")
    v = fit_view(spec, View(40, 25), fill=0.8)
    r = render(spec, v, 100)
    rows, cols = np.nonzero(r.part_id >= 0)
    span = max(np.abs(rows - 49.5).max(), np.abs(cols - 49.5).max()) * 2 / 100
    assert 0.7 < span < 0.86


# ---------------------------------------------------------------------------------------------- conditions


def test_part_mask_and_recolor_part():
    spec = random_object(0, "chair", pattern_prob=0.0)
    view = View(40, 25)
    r = render(spec, view, 96)
    seat = part_mask(r, "seat")
    assert seat.dtype == bool and seat.any()
    assert np.array_equal(seat, r.part_id == spec.index("seat"))
    both = part_mask(r, ["seat", "back"])
    assert np.array_equal(both, seat | part_mask(r, spec.index("back")))
    with pytest.raises(KeyError):
        part_mask(r, "wing")

    new = recolor_part(spec, "seat", (1.0, 0.0, 0.0))
    assert new.parts[new.index("seat")].color == (1.0, 0.0, 0.0)
    assert all(a == b for a, b in zip(new.parts, spec.parts) if a.name != "seat")
    assert spec.parts[spec.index("seat")].color != (1.0, 0.0, 0.0)  # the original is untouched
    r2 = render(new, view, 96)
    assert np.array_equal(r2.part_id, r.part_id)
    diff = np.abs(r2.rgba[..., :3].astype(int) - r.rgba[..., :3].astype(int)).sum(-1)
    assert diff[seat].mean() > 60
    assert diff[~seat].max() == 0

    striped = recolor_part(spec, "seat", (0.9, 0.8, 0.1), "stripes", period=0.06, axis="x")
    assert isinstance(striped.parts[striped.index("seat")].pattern, Pattern)
    r3 = render(striped, View(0, 60), 128)
    m = part_mask(r3, "seat")
    rgb = r3.rgba[m, :3].astype(float) / 255
    ratio = rgb.sum(1) / (0.9 + 0.8 + 0.1)
    assert (ratio < 0.4).sum() > 20 and (ratio > 0.5).sum() > 20  # both stripe colours show


def test_make_example_set(example):
    ex = example
    assert ex["kind"] in KINDS and ex["part_names"] == ex["spec"].part_names
    g = ex["global"]["image"]
    assert isinstance(g, Image.Image) and g.mode == "RGBA" and g.size == (256, 256)
    ga = np.asarray(g)[..., 3]
    assert ga[0, 0] == 0 and (ga == 255).mean() > 0.05
    assert 2 <= len(ex["locals"]) <= 3
    parts = [loc["part"] for loc in ex["locals"]]
    assert len(set(parts)) == len(parts) and set(parts) <= set(ex["part_names"])
    orig_colors = [p.color for p in ex["spec"].parts]
    for loc in ex["locals"]:
        img = np.asarray(loc["image"])
        mask = loc["mask"]
        assert img.shape == (256, 256, 4) and mask.shape == (256, 256) and mask.dtype == bool
        assert mask.sum() > 100 and np.all(img[mask, 3] > 0)
        assert loc["global_mask"].shape == (256, 256)
        assert loc["color"] not in orig_colors
        # the variant differs from the original object exactly in that part
        variant = loc["spec"]
        k = variant.index(loc["part"])
        assert all(a == b for i, (a, b) in enumerate(zip(variant.parts, ex["spec"].parts)) if i != k)
        assert variant.parts[k] != ex["spec"].parts[k]
        orig = render(ex["spec"], loc["view"], 256, supersample=2)
        diff = np.abs(orig.rgba[..., :3].astype(int) - img[..., :3].astype(int)).sum(-1)
        inner = ndimage.binary_erosion(mask, iterations=2)
        assert diff[inner].mean() > 40
        rest = ~ndimage.binary_dilation(mask, iterations=2)
        assert diff[rest].max() == 0
        assert np.array_equal(orig.rgba[..., 3], img[..., 3])
    # same seed, same set
    again = make_example_set(ex["seed"])
    assert np.array_equal(np.asarray(again["global"]["image"]), np.asarray(g))
    assert [loc["part"] for loc in again["locals"]] == parts


def test_save_and_reload_example_set(example, tmp_path):
    meta = save_example_set(example, tmp_path / "ex")
    files = {p.name for p in (tmp_path / "ex").iterdir()}
    n = len(example["locals"])
    assert "example.json" in files and "global.png" in files
    for i in range(n):
        assert {f"local_{i}.png", f"local_{i}_mask.png", f"global_mask_{i}.png"} <= files
    assert all((tmp_path / "ex" / f).stat().st_size < 60_000 for f in files)
    on_disk = json.loads((tmp_path / "ex" / "example.json").read_text())
    assert on_disk == meta and "null" not in json.dumps(meta)
    assert [loc["mask"] for loc in meta["locals"]] == [f"local_{i}_mask.png" for i in range(n)]
    with Image.open(tmp_path / "ex" / "local_0_mask.png") as m:
        assert m.mode == "L" and set(np.unique(np.asarray(m))) <= {0, 255}

    back = load_example_set(tmp_path / "ex")
    assert back["spec"] == example["spec"]
    assert back["part_names"] == example["part_names"]
    assert np.array_equal(np.asarray(back["global"]["image"]), np.asarray(example["global"]["image"]))
    assert back["global"]["view"] == example["global"]["view"]
    for a, b in zip(back["locals"], example["locals"]):
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(a["mask"], b["mask"])
        assert np.array_equal(a["global_mask"], b["global_mask"])
        assert a["part"] == b["part"] and a["view"] == b["view"]

"""Run specs (TOML/YAML) and the published Fuse3D demo's folder layout."""
import numpy as np
import pytest
from PIL import Image

from fuse3d.spec import SpecError, example_spec, load_published_demo, load_spec
from fuse3d.trellis.preprocess import preprocess_image


def rgba(w, h, box, color=(200, 60, 60)):
    a = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1, :3] = color
    a[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(a, "RGBA")


@pytest.fixture
def folder(tmp_path):
    rgba(600, 600, (60, 60, 540, 540)).save(tmp_path / "g.png")
    m = np.zeros((600, 600), np.uint8)
    m[60:300, 60:540] = 255
    Image.fromarray(m, "L").save(tmp_path / "m.png")
    return tmp_path


def write(folder, text, name="s.toml"):
    (folder / name).write_text(text)
    return folder / name


def test_the_bundled_examples_load():
    spec = load_spec(example_spec("car"))
    assert len(spec.local_conditions) == 3 and spec.global_condition.name == "global"
    with pytest.raises(SpecError, match="no bundled example 'sofa'; available: car, chair, conflict, robot"):
        example_spec("sofa")


def test_a_grey_png_mask_in_a_spec_selects_its_region(folder):
    spec = load_spec(write(folder, '[[local]]\nimage = "g.png"\nmask = "m.png"\n'))
    cond = spec.local_conditions[0]
    assert int(cond.mask.sum()) == 240 * 480
    prep = cond.prepare()
    assert 0.4 < prep.selected.sum() / prep.foreground.sum() < 0.6, "the top half of the object, not all of it"


@pytest.mark.parametrize("text, match", [
    ('colour = 1\n[[local]]\nimage = "g.png"\n', r"unknown top-level keys \['colour'\]"),
    ('[[local]]\nimage = "g.png"\nmaks = "m.png"\n', r"\[\[local\]\] #0: unknown keys \['maks'\]"),
    ('seed = "zero"\n[[local]]\nimage = "g.png"\n', "'seed' must be an integer, got 'zero'"),
    ('seed = 1.5\n[[local]]\nimage = "g.png"\n', "'seed' must be an integer"),
    ('model = 3\n[[local]]\nimage = "g.png"\n', "'model' must be a folder or repo id"),
    ('params = 3\n[[local]]\nimage = "g.png"\n', "'params' must be a table"),
    ('[[local]]\nimage = 5\n', "'image' must be a file path"),
    ('[[local]]\nimage = "g.png"\nbox = [1, 2, 3]\n', "'box' must be four numbers"),
    ('[[local]]\nimage = "g.png"\npatches = [1.5]\n', "'patches' must be a list of integers"),
    ('[[local]]\nimage = "g.png"\nmin_coverage = "a lot"\n', "'min_coverage' must be a number"),
    ('[[local]]\nimage = "g.png"\nmask = "m.png"\nbox = [0, 0, 5, 5]\n', "give one of mask, box, patches"),
    ('[[local]]\nimage = "../g.png"\n', "leaves the spec's folder"),
    ('[[local]]\nimage = "/etc/passwd"\n', "leaves the spec's folder"),
    ('[[local]]\nimage = "g.png"\nmask = "sub/../../m.png"\n', "'mask' = 'sub/../../m.png' leaves the spec's folder"),
    ('[[local]]\nimage = "x.png"\nbox = [0, 0, 5, 5]\n', r"\[\[local\]\] #0: cannot read image .*x.png: no such file"),
    ('[global]\nimage = "g.png"\n', "needs at least one"),
    ('[[local]]\nimage = "g.png"\nbackground = 1\n', "'background' must be a string"),
    ('[[local]]\nimage = "g.png"\nbackground = "white"\n', "background must be 'black' or None"),
    ('this is = not toml', "invalid TOML"),
])
def test_bad_specs_name_the_key(folder, text, match):
    with pytest.raises(SpecError, match=match):
        load_spec(write(folder, text))


def test_yaml_specs_and_their_errors(folder):
    spec = load_spec(write(folder, "seed: 4\nlocal:\n  - image: g.png\n    mask: m.png\n", "s.yaml"))
    assert spec.seed == 4 and len(spec.local_conditions) == 1
    with pytest.raises(SpecError, match="a spec is a table of keys, got a list"):
        load_spec(write(folder, "- 1\n- 2\n", "l.yaml"))
    with pytest.raises(SpecError, match="a spec is a .toml or .yaml file"):
        load_spec(write(folder, "{}", "s.json"))
    with pytest.raises(SpecError, match="no spec file"):
        load_spec(folder / "none.toml")


def test_painted_and_layer_regions_in_a_spec(folder):
    comp = np.asarray(Image.open(folder / "g.png")).copy()
    comp[100:120, 100:200, :3] = 255
    Image.fromarray(comp).save(folder / "c.png")
    layer = np.zeros((600, 600, 4), np.uint8)
    layer[100:120, 100:200, 3] = 120
    Image.fromarray(layer, "RGBA").save(folder / "l.png")
    spec = load_spec(write(folder, '[[local]]\nimage = "g.png"\npainted = "c.png"\n[[local]]\nimage = "g.png"\nlayer = "l.png"\n'))
    assert [int(c.mask.sum()) for c in spec.local_conditions] == [2000, 2000]


# ----------------------------------------------------------------------------------- the published demo's layout
def write_published_demo(root):
    """Folders in the published demo's layout, sizes and modes (its own files have no licence):

    - cond1: everything preprocessed — 518² opaque RGBA, the object on black; the composite is the
      background with strokes; the layer holds the strokes at alpha 91.
    - cond5: raw uploads with alpha (1280×893 global, 1280×1069 background); composite and layer in
      the preprocessed 518² frame (the demo paints on the preprocessed image).
    """
    (root / "global_cond").mkdir(parents=True)
    raw_g = rgba(1280, 893, (300, 100, 900, 800), (40, 120, 200))
    pre_g = preprocess_image(raw_g).image.convert("RGBA")             # opaque, on black
    pre_g.save(root / "global_cond" / "cond1.png")
    raw_g.save(root / "global_cond" / "cond5.png")
    strokes = {"cond1": (slice(14 * 8, 14 * 10), slice(14 * 12, 14 * 16)),
               "cond5": (slice(14 * 20, 14 * 21), slice(14 * 10, 14 * 13))}
    for name, raw in (("cond1", rgba(900, 700, (100, 100, 800, 650), (180, 160, 20))),
                      ("cond5", rgba(1280, 1069, (200, 150, 1100, 1000), (90, 200, 90)))):
        d = root / "local_cond" / name
        d.mkdir(parents=True)
        pre = preprocess_image(raw).image.convert("RGBA")
        (pre if name == "cond1" else raw).save(d / "bg1.png")
        com = np.asarray(pre).copy()
        com[strokes[name]] = (255, 0, 255, 255)
        Image.fromarray(com, "RGBA").save(d / "com1.png")
        layer = np.zeros((518, 518, 4), np.uint8)
        layer[strokes[name]] = (255, 0, 255, 91)
        Image.fromarray(layer, "RGBA").save(d / "layer1.png")
    return strokes


def test_the_published_demo_inputs_load_as_they_are(tmp_path):
    write_published_demo(tmp_path)
    for name, patches in (("cond1", {37 * i + j for i in (8, 9) for j in range(12, 16)}),
                          ("cond5", {37 * 20 + j for j in (10, 11, 12)})):
        spec = load_published_demo(tmp_path, name)
        assert spec.global_condition.name == f"{name}_global" and len(spec.local_conditions) == 1
        local = spec.local_conditions[0]
        sel = set(np.flatnonzero(local.prepare().selected.reshape(-1)))
        if name == "cond5":
            assert local.mask_frame == "preprocessed"
            assert sel == patches, "painted in the preprocessed frame: exactly the painted patches"
        else:
            assert local.background == "black" and spec.global_condition.background == "black"
            assert len(sel ^ patches) <= 8, "re-cropping a preprocessed image moves patch edges a little"
        assert spec.global_condition.prepare().foreground.sum() > 200


def test_the_published_demo_layout_errors(tmp_path):
    with pytest.raises(SpecError, match="no global_cond/cond9.png"):
        load_published_demo(tmp_path, "cond9")
    write_published_demo(tmp_path)
    (tmp_path / "global_cond" / "cond7.png").write_bytes((tmp_path / "global_cond" / "cond5.png").read_bytes())
    with pytest.raises(SpecError, match="no local_cond/cond7/ folder"):
        load_published_demo(tmp_path, "cond7")
    (tmp_path / "local_cond" / "cond7").mkdir()
    (tmp_path / "local_cond" / "cond7" / "bg1.png").write_bytes((tmp_path / "local_cond" / "cond5" / "bg1.png").read_bytes())
    with pytest.raises(SpecError, match="no com1.png or layer1.png beside it"):
        load_published_demo(tmp_path, "cond7")
    Image.new("RGB", (300, 300), (200, 200, 200)).save(tmp_path / "local_cond" / "cond7" / "bg2.png")
    Image.new("RGB", (518, 518), (200, 0, 200)).save(tmp_path / "local_cond" / "cond7" / "com2.png")
    (tmp_path / "local_cond" / "cond7" / "layer1.png").write_bytes((tmp_path / "local_cond" / "cond5" / "layer1.png").read_bytes())
    with pytest.raises(SpecError, match="bg2.png: no alpha channel and no black background; pass remove_background"):
        load_published_demo(tmp_path, "cond7")


# ----------------------------------------------------------------------------------- the bundled examples
# Selected / foreground patches of each local image, pinned (before the mask fix, every local image
# selected its whole object: e.g. the chair's 453/453 and 365/365).
EXAMPLE_PATCHES = {"chair": [(199, 422), (146, 327)], "car": [(344, 535), (149, 439), (35, 364)],
                   "robot": [(158, 294), (66, 304), (49, 332)], "conflict": [(181, 426), (30, 376)]}


@pytest.mark.parametrize("name", sorted(EXAMPLE_PATCHES))
def test_each_bundled_example_selects_what_its_mask_shows(name):
    from fuse3d.method.fusion import patch_grid_mask

    spec = load_spec(example_spec(name))
    counts = []
    for cond in spec.local_conditions:
        prep = cond.prepare()
        with Image.open(spec.path.parent / f"{cond.name}_mask.png") as im:
            shown = np.asarray(im.convert("L")) > 0  # the mask as any viewer shows it
        assert np.array_equal(cond.mask, shown)
        assert np.array_equal(prep.selected, patch_grid_mask(prep.pre.transform_mask(shown)) & prep.foreground)
        counts.append((int(prep.selected.sum()), int(prep.foreground.sum())))
    assert counts == EXAMPLE_PATCHES[name]

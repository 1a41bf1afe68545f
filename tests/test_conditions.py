"""Condition images and masks: how a mask is read, how it follows the crop, every bad input."""
import io
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fuse3d import Condition, ConditionError
from fuse3d.conditions import UpscaleWarning, load_image, open_image, read_mask, split_global
from fuse3d.method.fusion import patch_grid_mask
from fuse3d.trellis.preprocess import preprocess_image

W, H = 64, 48  # the half-image masks below select the left 32 columns: 32·48 = 1536 pixels
HALF = W // 2 * H


def object_image(w=W, h=H, box=None, color=(200, 60, 60)):
    """RGBA: a coloured box (default: the whole image but a 4-px border) on transparent black."""
    x0, y0, x1, y1 = box or (4, 4, w - 4, h - 4)
    a = np.zeros((h, w, 4), np.uint8)
    a[y0:y1, x0:x1, :3] = color
    a[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(a, "RGBA")


def half(dtype=np.uint8, on=255):
    m = np.zeros((H, W), dtype)
    m[:, : W // 2] = on
    return m


def save(img, tmp_path, name="m.png", **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


# --------------------------------------------------------------------------------------- masks by meaning
def _mask_images():
    m = half()
    opaque_alpha = np.full((H, W), 255, np.uint8)
    p_img = Image.fromarray(m, "L").convert("P")
    p_transparent = Image.fromarray(np.where(m > 0, 1, 0).astype(np.uint8), "P")
    p_transparent.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    p_transparent.info["transparency"] = 0  # index 0 (the unselected half) is transparent
    rgb = np.dstack([m, m // 2, np.zeros_like(m)])
    return {
        "1": Image.fromarray(m > 0).convert("1"),
        "L": Image.fromarray(m, "L"),
        "LA opaque": Image.fromarray(np.dstack([m, opaque_alpha]), "LA"),
        "LA transparent": Image.fromarray(np.dstack([np.full_like(m, 255), m]), "LA"),
        "P": p_img,
        "P transparent": p_transparent,
        "RGB": Image.fromarray(rgb, "RGB"),
        "RGBA opaque": Image.fromarray(np.dstack([rgb, opaque_alpha]), "RGBA"),
        "RGBA transparent": Image.fromarray(np.dstack([np.full((H, W, 3), 40, np.uint8), m]), "RGBA"),
        "I;16": Image.fromarray(half(np.uint16, 40000)),
        "CMYK": Image.fromarray(np.dstack([255 - m, 255 - m, 255 - m, np.zeros_like(m)]), "CMYK"),
    }


@pytest.mark.parametrize("mode", list(_mask_images()))
def test_mask_files_and_images_select_their_half(mode, tmp_path):
    img = _mask_images()[mode]
    assert int(read_mask(img, (W, H)).sum()) == HALF, "as a PIL image"
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = save(img, tmp_path, f"mask.{fmt.lower()}", format=fmt)
    assert int(read_mask(path, (W, H)).sum()) == HALF, "as a file"
    cond = Condition(object_image(), path)
    assert int(cond.mask.sum()) == HALF
    assert cond.mask[:, : W // 2].all() and not cond.mask[:, W // 2:].any()


@pytest.mark.parametrize("array", [
    half(bool, True), half(np.uint8), half(np.float32, 0.7), half(np.int64, 3),
    np.dstack([half(), half(), half()]),                                  # RGB, channels last
    np.dstack([half(), np.full((H, W), 255, np.uint8)]),                 # LA with opaque alpha
    np.dstack([np.zeros((H, W, 3), np.uint8), half()]),                  # RGBA with a real alpha
    half(np.uint8)[..., None],
], ids=["bool", "uint8", "float", "int64", "rgb", "la-opaque", "rgba-alpha", "hw1"])
def test_mask_arrays_select_their_half(array):
    assert int(read_mask(array, (W, H)).sum()) == HALF
    assert int(read_mask(torch.from_numpy(np.ascontiguousarray(array)), (W, H)).sum()) == HALF


def test_a_lossy_jpeg_mask_is_read_at_half_luminance(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[:, :29] = 255                                     # an edge inside an 8×8 JPEG block
    path = save(Image.fromarray(m, "L"), tmp_path, "m.jpg", quality=60)
    noisy = np.asarray(Image.open(path))
    assert ((noisy > 0) & (noisy < 128)).any(), "the JPEG carries compression noise"
    assert int((noisy > 0).sum()) > 29 * H, "read as non-zero, the noise would widen the mask"
    assert abs(int(read_mask(path, (W, H)).sum()) - 29 * H) <= H  # at most one column of ringing


@pytest.mark.parametrize("empty", [
    np.zeros((H, W), bool), np.zeros((H, W), np.uint8), Image.new("L", (W, H), 0),
    Image.new("RGBA", (W, H), (255, 255, 255, 0)), Image.new("RGB", (W, H)), Image.new("1", (W, H)),
], ids=["bool", "uint8", "L", "RGBA-transparent", "RGB-black", "1"])
def test_an_empty_mask_raises_in_every_form(empty, tmp_path):
    with pytest.raises(ConditionError, match="the mask is empty"):
        Condition(object_image(), empty)
    if isinstance(empty, Image.Image):
        with pytest.raises(ConditionError, match="the mask is empty"):
            Condition(object_image(), save(empty, tmp_path))


def test_bad_mask_inputs_say_what_is_wrong(tmp_path):
    img = object_image()
    with pytest.raises(ConditionError, match=r"mask size 10×10 does not match the image size 64×48"):
        Condition(img, np.ones((10, 10), bool))
    with pytest.raises(ConditionError, match="mask_frame='preprocessed'"):
        Condition(img, np.ones((518, 518), bool))
    with pytest.raises(ConditionError, match="NaN or infinite"):
        Condition(img, np.full((H, W), np.nan))
    with pytest.raises(ConditionError, match=r"must be \[H, W\] or \[H, W, C\]"):
        Condition(img, np.ones((2, H, W, 1), bool))
    with pytest.raises(ConditionError, match="1 \\(grey\\), 2 \\(grey \\+ alpha\\), 3 \\(RGB\\) or 4"):
        Condition(img, np.ones((H, W, 5), np.uint8))
    with pytest.raises(ConditionError, match="bool or numeric"):
        Condition(img, np.array([["a"] * W] * H))
    with pytest.raises(ConditionError, match="cannot read mask .*nope.png: no such file"):
        Condition(img, tmp_path / "nope.png")
    with pytest.raises(ConditionError, match="mask_frame must be one of"):
        Condition(img, half(), mask_frame="crop")


# --------------------------------------------------------------------------------------- image files
def test_bad_image_files(tmp_path):
    with pytest.raises(ConditionError, match="cannot read image .*nope.png: no such file"):
        Condition(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ConditionError, match="cannot read image .*bad.png"):
        Condition(tmp_path / "bad.png")
    full = io.BytesIO()
    object_image().save(full, format="PNG")
    (tmp_path / "cut.png").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ConditionError, match="cannot read image .*cut.png"):
        Condition(tmp_path / "cut.png")
    with pytest.raises(ConditionError, match="it is a folder"):
        Condition(tmp_path)
    with pytest.raises(ConditionError, match="empty: the image has no foreground"):
        Condition(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), name="empty").prepare()
    with pytest.raises(ConditionError, match="mode F"):
        Condition(Image.new("F", (50, 50)))


def test_exif_rotated_files_are_read_as_a_viewer_shows_them(tmp_path):
    arr = np.asarray(object_image(60, 30, box=(0, 0, 20, 30)))  # object in the left third
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = save(Image.fromarray(arr, "RGBA"), tmp_path, "rot.png", exif=exif)
    mask = save(Image.fromarray((arr[..., 3] > 0).astype(np.uint8) * 255, "L"), tmp_path, "rot_mask.png", exif=exif)
    cond = Condition(image, mask)
    assert cond.image.size == (30, 60), "rotated upright"
    assert np.array_equal(cond.mask, np.asarray(cond.image)[..., 3] > 0), "the mask is rotated the same way"
    assert np.asarray(cond.image)[:20, :, 3].all(), "the left third is now the top third"


def test_cmyk_and_16_bit_images(tmp_path):
    cmyk = Image.new("CMYK", (40, 40), (0, 0, 0, 255))  # black ink everywhere
    assert load_image(cmyk).mode == "RGB"
    with pytest.raises(ConditionError, match="no alpha channel"):
        Condition(cmyk).prepare()
    grey16 = Image.fromarray(np.full((40, 40), 50000, np.uint16))
    assert load_image(grey16).mode == "RGBA" and np.asarray(load_image(grey16))[0, 0, 0] == 50000 >> 8
    with pytest.raises(ConditionError, match="no alpha channel"):
        Condition(save(grey16, tmp_path, "g16.png")).prepare()


def test_animated_images_use_their_first_frame_and_say_so(tmp_path):
    frames = [object_image(color=(200, 0, 0)).convert("RGB"), Image.new("RGB", (W, H), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="anim.gif is animated \\(2 frames\\): fuse3d uses its first frame"):
        img = open_image(path)
    assert np.asarray(img.convert("RGB"))[H // 2, W // 2, 0] > 150


# --------------------------------------------------------------------------------------- the crop, by coverage
def _stroke_case(scale: float):
    """An object whose TRELLIS crop maps to 518 px at ``scale`` (output px per source px)."""
    box_side = int(round(518 / scale / 1.2))
    size = box_side + 40
    img = object_image(size, size, box=(20, 20, 20 + box_side, 20 + box_side))
    return img, preprocess_image(img)


@pytest.mark.parametrize("scale", [0.2, 0.39, 0.7, 1.0, 1.37, 2.0])
def test_a_one_pixel_stroke_survives_the_crop_at_any_scale(scale):
    img, pre = _stroke_case(scale)
    x0, y0, x1, y1 = pre.pixel_box
    w = x1 - x0
    col = 20 + (img.size[0] - 40) // 3                   # a vertical 1-px stroke inside the object
    mask = np.zeros((img.size[1], img.size[0]), bool)
    mask[40:-40, col] = True
    out = pre.transform_mask(mask)
    cols = np.flatnonzero(out.any(0))
    lo = int(np.floor(Fraction(col - x0) * 518 / w))   # output columns whose footprint overlaps the stroke
    hi = int(np.ceil(Fraction(col + 1 - x0) * 518 / w)) - 1
    assert cols.tolist() == list(range(lo, hi + 1))
    cond = Condition(img, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # small scales upscale: that warning is tested below
        sel = cond.prepare().selected
    assert sel.any() and set(np.flatnonzero(sel.any(0))) == {lo // 14, hi // 14}


def test_the_outside_the_crop_error_fires_only_when_that_is_the_cause():
    img = object_image(200, 200, box=(60, 60, 140, 140))  # crop: 96 px around the centre (52..148)
    outside = np.zeros((200, 200), bool)
    outside[0:20, 0:20] = True
    with pytest.raises(ConditionError, match="the mask lies outside the cropped object"):
        Condition(img, outside).prepare()
    background = np.zeros((200, 200), bool)
    background[52:56, 52:56] = True                       # inside the crop, on the transparent margin
    with pytest.raises(ConditionError, match="selects no foreground patch"):
        Condition(img, background).prepare()
    speck = np.zeros((200, 200), bool)
    speck[100, 100] = True          # one pixel, upscaled ×5.5 to output pixels 264..269: patches 18 and 19
    sel = Condition(img, speck).prepare().selected
    assert set(np.flatnonzero(sel.reshape(-1))) == {37 * i + j for i in (18, 19) for j in (18, 19)}


def _reference_patches(mask: np.ndarray, pixel_box) -> np.ndarray:
    """Brute force, in exact fractions: patch (i, j) is selected iff a selected source pixel's square
    overlaps the patch's footprint in the source, ``[left + 14·j·w/518, left + 14·(j+1)·w/518)``."""
    x0, y0, x1, y1 = pixel_box
    sx, sy = Fraction(x1 - x0, 518), Fraction(y1 - y0, 518)
    ref = np.zeros((37, 37), bool)
    for y, x in zip(*np.nonzero(mask)):
        for i in range(37):
            if not (y + 1 > y0 + 14 * i * sy and y < y0 + 14 * (i + 1) * sy):
                continue
            for j in range(37):
                if x + 1 > x0 + 14 * j * sx and x < x0 + 14 * (j + 1) * sx:
                    ref[i, j] = True
    return ref


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=st.integers(6, 120), h=st.integers(6, 120), data=st.data())
def test_mask_to_patches_equals_a_brute_force_reference(w, h, data):
    bx0 = data.draw(st.integers(0, w - 2))
    bx1 = data.draw(st.integers(bx0 + 1, w))
    by0 = data.draw(st.integers(0, h - 2))
    by1 = data.draw(st.integers(by0 + 1, h))
    points = data.draw(st.lists(st.tuples(st.integers(0, w - 1), st.integers(0, h - 1)), min_size=1, max_size=12))
    mask = np.zeros((h, w), bool)
    for x, y in points:
        mask[y, x] = True
    pre = preprocess_image(object_image(w, h, box=(bx0, by0, bx1, by1)))
    assert np.array_equal(patch_grid_mask(pre.transform_mask(mask)), _reference_patches(mask, pre.pixel_box))


# --------------------------------------------------------------------------------------- warnings and constructors
def test_small_inputs_warn_with_the_upscale_factor():
    with pytest.warns(UpscaleWarning, match=r"tiny: the object's crop is 6 px, below the encoder's 518 px; it is upscaled ×86.33"):
        Condition(object_image(8, 8, box=(1, 1, 7, 7)), name="tiny").prepare()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Condition(object_image(700, 700, box=(100, 100, 600, 600))).prepare()  # crop 600 px: no warning


def test_painted_box_and_patch_regions():
    img = object_image(80, 80, box=(10, 10, 60, 60))
    painted = np.asarray(img).copy()
    painted[20:30, 20:30, :3] = 255
    assert Condition.from_painted(img, Image.fromarray(painted)).mask.sum() == 100
    with pytest.raises(ConditionError, match="the painted region is empty"):
        Condition.from_painted(img, img)
    with pytest.raises(ConditionError, match="matches neither the image size 80×80 nor the preprocessed frame"):
        Condition.from_painted(img, Image.new("RGBA", (90, 90)))
    with pytest.raises(ConditionError, match="lies outside the 80×80 image"):
        Condition.from_box(img, (100, 100, 120, 120))
    with pytest.raises(ConditionError, match="four numbers"):
        Condition.from_box(img, ("a", 0, 1, 1))
    with pytest.raises(ConditionError, match="patch indices must be in"):
        Condition.from_patches(img, [5000])
    with pytest.raises(ConditionError, match="patch indices must be in"):
        Condition.from_patches(img, [-1])
    with pytest.raises(ConditionError, match="patches must be integers"):
        Condition.from_patches(img, [1.5])


def test_split_global_picks_the_largest_selection():
    big = Condition(object_image(100, 100, box=(5, 5, 95, 95)), name="big")
    small_mask = np.zeros((100, 100), bool)
    small_mask[40:50, 40:50] = True
    small = Condition(object_image(100, 100, box=(5, 5, 95, 95)), small_mask, name="small")
    g, rest = split_global([small, big])
    assert g is big and rest == [small]
    with pytest.raises(ConditionError, match="no condition images"):
        split_global([])


# --------------------------------------------------------------------------------------- preprocessed inputs
def preprocessed_on_black():
    """An image as TRELLIS's preprocessing leaves it: 518², opaque, the object on black."""
    big = object_image(1400, 1100, box=(300, 200, 1100, 950), color=(180, 90, 30))
    return preprocess_image(big).image.convert("RGBA")


def test_an_image_already_on_black_is_accepted_with_background_black():
    img = preprocessed_on_black()
    with pytest.raises(ConditionError, match="Its border is black: .*background='black'"):
        Condition(img).prepare()
    with pytest.raises(ConditionError) as err:
        Condition(Image.new("RGB", (50, 50), (9, 9, 9))).prepare()
    assert "background='black'" not in str(err.value), "no black border, no such hint"
    pre = Condition(img, background="black").prepare()
    assert abs(pre.pre.crop_size - 518) <= 10, "nearly the identity for an image TRELLIS already preprocessed"
    before = patch_grid_mask(np.asarray(img)[..., :3].any(-1))
    assert abs(int(pre.foreground.sum()) - int(before.sum())) <= 0.05 * before.sum(), "about as many object patches"
    with pytest.raises(ConditionError, match="background must be 'black' or None"):
        Condition(img, background="white")


def test_painted_in_the_preprocessed_frame_against_a_raw_background():
    raw = object_image(1280, 1069, box=(400, 300, 900, 800), color=(90, 160, 60))  # a raw upload with alpha
    pre = preprocess_image(raw)
    composite = np.asarray(pre.image).copy()
    composite[14 * 10:14 * 12, 14 * 15:14 * 18] = (255, 0, 255)  # strokes over patches rows 10-11, cols 15-17
    cond = Condition.from_painted(raw, Image.fromarray(composite).convert("RGBA"), name="bg1")
    assert cond.mask_frame == "preprocessed" and "preprocessed frame" in repr(cond)
    sel = cond.prepare().selected
    assert set(np.flatnonzero(sel.reshape(-1))) == {37 * i + j for i in (10, 11) for j in (15, 16, 17)}


def test_painted_layers_in_either_frame():
    img = object_image(200, 200, box=(20, 20, 180, 180))
    layer = np.zeros((200, 200, 4), np.uint8)
    layer[50:60, 50:150] = (255, 0, 0, 91)  # a semi-transparent pen, as the demo stores it
    cond = Condition.from_layer(img, Image.fromarray(layer, "RGBA"))
    assert cond.mask_frame == "image" and cond.mask.sum() == 1000
    big = np.zeros((518, 518, 4), np.uint8)
    big[14 * 5:14 * 6, 14 * 20:14 * 22, 3] = 153
    cond = Condition.from_layer(img, Image.fromarray(big, "RGBA"))
    assert set(np.flatnonzero(cond.prepare().selected.reshape(-1))) == {37 * 5 + 20, 37 * 5 + 21}
    with pytest.raises(ConditionError, match="needs an alpha channel"):
        Condition.from_layer(img, Image.new("RGB", (200, 200)))
    with pytest.raises(ConditionError, match="the layer region is empty"):
        Condition.from_layer(img, Image.new("RGBA", (200, 200)))
    with pytest.raises(ConditionError, match="layer size 10×10 matches neither"):
        Condition.from_layer(img, Image.new("RGBA", (10, 10), (0, 0, 0, 255)))


# --------------------------------------------------------------------------------------- rembg
def write_tiny_u2net(path):
    """A stand-in for rembg's u2net: the mean of the normalised RGB channels (bright = object)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input.1", "axes"], ["mask"], keepdims=1)], "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_rembg_removes_the_background_from_its_own_cache_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    photo = np.full((400, 1300, 3), 30, np.uint8)   # an RGB upload wider than 1024 px: shrunk for rembg
    photo[100:300, 500:800] = 230                     # a bright object
    with pytest.raises(ConditionError, match="u2net.onnx is not in rembg's cache .*never downloads it"):
        Condition(Image.fromarray(photo), remove_background="rembg").prepare()
    (tmp_path / "u2net").mkdir()
    write_tiny_u2net(tmp_path / "u2net" / "u2net.onnx")
    import pooch

    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("rembg tried to download"))
    cond = Condition(Image.fromarray(photo), remove_background="rembg", name="photo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = cond.prepare().pre
    x0, y0, x1, y1 = pre.crop_box
    assert abs((x0 + x1) / 2 - 649.5) < 4 and abs((y0 + y1) / 2 - 199.5) < 4, "centred on the object"
    assert abs((x1 - x0) - 1.2 * 299) < 8
    assert pre.source_size == (1300, 400), "the user's pixels and frame are kept"
    with pytest.raises(ConditionError, match="remove_background must be a function or 'rembg'"):
        Condition(Image.fromarray(photo), remove_background="u2net")

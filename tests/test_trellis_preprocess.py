import numpy as np
import pytest
import torch
from PIL import Image

from fuse3d.trellis.dinov2 import DinoV2WeightsError, load_dinov2, resolve_dinov2_weights
from fuse3d.trellis.preprocess import PreprocessError, has_alpha, preprocess_image


def rgba_square(w=200, h=120, box=(50, 20, 110, 100), color=(200, 40, 40)):
    arr = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1, :3] = color
    arr[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(arr, "RGBA")


def test_crop_is_a_square_of_1_2x_the_object_box():
    pre = preprocess_image(rgba_square())
    # object spans x 50..109, y 20..99: size = int(79·1.2) = 94 around the centre (79.5, 59.5)
    assert pre.crop_box == (79.5 - 47, 59.5 - 47, 79.5 + 47, 59.5 + 47)
    assert pre.image.size == (518, 518) and pre.image.mode == "RGB"
    arr = np.asarray(pre.image)
    assert arr[0, 0].tolist() == [0, 0, 0], "premultiplied on black outside the object"
    assert abs(int(arr[259, 259, 0]) - 200) <= 1
    assert pre.alpha.shape == (518, 518) and pre.alpha[259, 259] > 0.99


def test_crop_past_the_border_pads_transparent():
    pre = preprocess_image(rgba_square(w=100, h=100, box=(0, 0, 100, 90)))
    assert pre.crop_box[0] < 0
    assert np.asarray(pre.image)[2, 259].tolist() == [0, 0, 0]


def test_mask_follows_the_crop():
    img = rgba_square()
    mask = np.zeros((120, 200), np.uint8)
    mask[20:60, 50:110] = 1  # top half of the object
    pre = preprocess_image(img)
    m = pre.transform_mask(mask)
    assert m.shape == (518, 518) and m.dtype == bool
    rows = np.where(m.any(axis=1))[0]
    # the object occupies rows ~ (20-12.5)/94·518 .. (100-12.5)/94·518; its top half ends at row ~262
    assert abs(rows.min() - (20 - 12.5) / 94 * 518) < 3
    assert abs(rows.max() - (60 - 12.5) / 94 * 518) < 3
    with pytest.raises(PreprocessError, match="mask size 10×10 does not match the image size 200×120"):
        pre.transform_mask(np.ones((10, 10)))


def test_images_without_alpha_or_foreground_are_errors():
    rgb = Image.new("RGB", (50, 50), (10, 20, 30))
    assert not has_alpha(rgb) and not has_alpha(rgb.convert("RGBA"))
    with pytest.raises(PreprocessError, match="no alpha channel"):
        preprocess_image(rgb)
    with pytest.raises(PreprocessError, match="no foreground"):
        preprocess_image(Image.new("RGBA", (50, 50), (0, 0, 0, 0)))
    # a background remover makes RGB usable
    pre = preprocess_image(rgb, remove_background=lambda im: rgba_square(50, 50, (10, 10, 40, 40)))
    assert pre.image.size == (518, 518)


def test_dinov2_weights_resolution(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    monkeypatch.delenv("FUSE3D_DINOV2", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DinoV2WeightsError, match="no weights found for dinov2_vits14_reg"):
        resolve_dinov2_weights("dinov2_vits14_reg")
    # a folder holding timm-format model.safetensors, via the environment variable
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=518, num_classes=0)
    (tmp_path / "w").mkdir()
    save_file(vit.state_dict(), str(tmp_path / "w" / "model.safetensors"))
    monkeypatch.setenv("FUSE3D_DINOV2", str(tmp_path / "w"))
    assert resolve_dinov2_weights("dinov2_vits14_reg") == tmp_path / "w" / "model.safetensors"
    enc = load_dinov2("dinov2_vits14_reg")
    tokens = enc(torch.rand(1, 3, 518, 518))
    assert tokens.shape == (1, 1374, 384)
    # the original .pth release in the torch hub folder (read with weights_only=True)
    monkeypatch.delenv("FUSE3D_DINOV2")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({k: v for k, v in vit.state_dict().items()}, hub / "dinov2_vits14_reg4_pretrain.pth")
    assert resolve_dinov2_weights("dinov2_vits14_reg").name == "dinov2_vits14_reg4_pretrain.pth"
    assert torch.allclose(load_dinov2("dinov2_vits14_reg")(torch.zeros(1, 3, 518, 518)), enc(torch.zeros(1, 3, 518, 518)))
    with pytest.raises(DinoV2WeightsError, match="unknown DINOv2 model"):
        resolve_dinov2_weights("dinov3")

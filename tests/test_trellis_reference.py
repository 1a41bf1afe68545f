"""The networks reproduce the published implementation's outputs (reference fixtures, fp32, CPU)."""
import json

import pytest
import torch

from fuse3d.trellis import FlowEulerSampler, SparseTensor, build
from fuse3d.trellis.dinov2 import DinoV2Encoder

from conftest import REFERENCE, load_reference

TOL = 1e-4


def _built(name):
    config, params, tensors = load_reference(name)
    model = build(config["name"], **config["args"])
    model.load_state_dict(params, strict=True)
    return model, tensors


def test_structure_flow_matches_reference():
    model, io = _built("ss_flow_tiny")
    y = model(io["input.x"], io["input.t"], io["input.cond"])
    assert y.shape == io["output.y"].shape
    assert (y - io["output.y"]).abs().max() < TOL


def test_structure_decoder_matches_reference():
    model, io = _built("ss_decoder_tiny")
    y = model(io["input.z"])
    assert (y - io["output.logits"]).abs().max() < TOL


def test_latent_flow_matches_reference():
    model, io = _built("slat_flow_tiny")
    x = SparseTensor(io["input.feats"], io["input.coords"])
    y = model(x, io["input.t"], io["input.cond"])
    assert torch.equal(y.coords, io["input.coords"])
    assert (y.feats - io["output.feats"]).abs().max() < TOL


@pytest.mark.parametrize("name", ["slat_dec_gs_tiny", "slat_dec_rf_tiny", "slat_dec_mesh_tiny"])
def test_latent_decoders_match_reference(name):
    model, io = _built(name)
    out = model.decode_features(SparseTensor(io["input.feats"], io["input.coords"]))
    assert torch.equal(out.coords, io["output.coords"])
    assert (out.feats - io["output.feats"]).abs().max() < TOL


def test_sampler_matches_reference():
    model, _ = _built("ss_flow_tiny")
    config, _, io = load_reference("sampler_flow_euler_guidance_interval")
    sampler = FlowEulerSampler(**config["sampler"]["args"])
    out = sampler.sample(model, io["input.noise"], io["input.cond"], io["input.neg_cond"],
                         progress=False, keep_trajectory=True, **config["params"])
    assert out.t_seq.dtype.name == "float64"
    assert abs(out.t_seq - io["output.t_seq"].numpy()).max() < 1e-12
    for i in range(config["params"]["steps"]):
        assert (out.pred_x_t[i] - io[f"output.pred_x_t.{i}"]).abs().max() < TOL
        assert (out.pred_x_0[i] - io[f"output.pred_x_0.{i}"]).abs().max() < TOL
    assert (out.samples - io["output.samples"]).abs().max() < TOL


def test_dinov2_tokens_match_reference():
    config, params, io = load_reference("dinov2_reg_tiny")
    a = config["args"]
    enc = DinoV2Encoder("vit_small_patch14_reg4_dinov2", img_size=a["img_size"], embed_dim=a["embed_dim"],
                        depth=a["depth"], num_heads=a["num_heads"])
    enc.load_weights(params, "dinov2_reg_tiny")  # original DINOv2 key format
    prenorm = enc.prenorm_tokens(io["input.image"])
    assert (prenorm - io["output.x_prenorm"]).abs().max() < 1e-5
    tokens = torch.nn.functional.layer_norm(prenorm, prenorm.shape[-1:])
    assert (tokens - io["output.trellis_tokens"]).abs().max() < 1e-5
    # forward() takes [0, 1] pixels and normalises them itself
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = io["input.image"] * std + mean
    assert (enc(pixels) - io["output.trellis_tokens"]).abs().max() < 1e-4


MANIFEST = json.loads((REFERENCE / "trellis_image_large_manifest.json").read_text())


@pytest.mark.parametrize("ckpt", [k for k in MANIFEST if k != "dinov2_vitl14_reg"])
def test_full_size_networks_match_manifest(ckpt):
    entry = MANIFEST[ckpt]
    with torch.device("meta"):
        model = build(entry["name"], **entry["args"])
    sd = model.state_dict()
    assert set(sd) == set(entry["state_dict"])
    for key, (shape, dtype) in entry["state_dict"].items():
        assert list(sd[key].shape) == shape, key
        assert str(sd[key].dtype).replace("torch.", "") == dtype, key
    assert sum(v.numel() for v in sd.values()) == entry["num_params"]


def test_full_size_dinov2_accepts_original_checkpoint_layout():
    entry = MANIFEST["dinov2_vitl14_reg"]
    with torch.device("meta"):
        enc = DinoV2Encoder("vit_large_patch14_reg4_dinov2", img_size=518)
    enc = enc.to_empty(device="cpu")
    original = {k: torch.zeros(shape) for k, (shape, _) in entry["state_dict"].items()}
    enc.load_weights(original, "manifest")  # strict: raises on any missing/unexpected key or shape
    assert enc.num_tokens == 1374 and enc.width == 1024 and enc.grid == 37

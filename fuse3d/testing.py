"""A tiny random-weight TRELLIS-architecture model, written in the official folder format.

``write_tiny_model(path)`` builds every network of TRELLIS-image-large at toy width (same classes,
same resolutions: 16³ structure latent, 64³ voxels, 518² images, 37×37 patches) plus a tiny
DINOv2-architecture encoder, re-draws every parameter at random (so zero-initialised layers do not
hide mistakes) and writes ``pipeline.json`` + ``ckpts/*``. The structure decoder's output bias is
calibrated so that a sampled structure has about 1000 active voxels. Its outputs mean nothing:
it exists so that every code path runs fast on a CPU.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Union

import torch
import torch.nn as nn

from .trellis.dinov2 import DinoV2Encoder
from .trellis.pipeline import write_pipeline
from .trellis.registry import build
from .trellis.vae import gaussian_representation_config

TINY_MODEL_NAME = "fuse3d-tiny-random"
TINY_WIDTH = 64  # DINOv2 width = flows' cond_channels

TINY_NETWORKS: Dict[str, tuple] = {
    "sparse_structure_flow_model": ("ss_flow_tiny", "SparseStructureFlowModel", dict(
        resolution=16, in_channels=8, out_channels=8, model_channels=64, cond_channels=TINY_WIDTH, num_blocks=2,
        num_heads=4, mlp_ratio=4, patch_size=1, pe_mode="ape", qk_rms_norm=True, use_fp16=True)),
    "sparse_structure_decoder": ("ss_decoder_tiny", "SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8], use_fp16=True)),
    "slat_flow_model": ("slat_flow_tiny", "SLatFlowModel", dict(
        resolution=64, in_channels=8, out_channels=8, model_channels=64, cond_channels=TINY_WIDTH, num_blocks=2,
        num_heads=16, mlp_ratio=2, patch_size=2, num_io_res_blocks=2, io_block_channels=[16], pe_mode="ape",
        qk_rms_norm=True, use_fp16=True)),
    "slat_decoder_gs": ("slat_dec_gs_tiny", "SLatGaussianDecoder", dict(
        resolution=64, model_channels=32, latent_channels=8, num_blocks=1, num_heads=2, mlp_ratio=2, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config=gaussian_representation_config(8))),
    "slat_decoder_mesh": ("slat_dec_mesh_tiny", "SLatMeshDecoder", dict(
        resolution=64, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4, mlp_ratio=1, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config={"use_color": True})),
    "slat_decoder_rf": ("slat_dec_rf_tiny", "SLatRadianceFieldDecoder", dict(
        resolution=64, model_channels=32, latent_channels=8, num_blocks=1, num_heads=2, mlp_ratio=2, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config={"rank": 4, "dim": 8})),
}
TINY_ENCODER = dict(arch="vit_small_patch14_reg4_dinov2", img_size=518, embed_dim=TINY_WIDTH, depth=2, num_heads=4)
TINY_SAMPLER = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5}}


@torch.no_grad()
def randomize_(model: nn.Module, generator: torch.Generator, gain: float = 1.0) -> nn.Module:
    """Re-draw every parameter: weights ``N(0, gain²/fan_in)``, biases ``N(0, 0.02²)``, norm scales ``1 + N(0, 0.1²)``."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim >= 2 and leaf != "gamma":
            fan_in = p[0].numel() if p.ndim > 2 else p.shape[1]
            if "pos_embed" in name or "token" in name:
                fan_in = 1
            p.copy_(torch.randn(p.shape, generator=generator, device=generator.device) * gain / math.sqrt(fan_in))
        elif leaf in ("weight", "gamma"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator, device=generator.device))
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=generator, device=generator.device))
    return model


@torch.no_grad()
def _calibrate_structure(flow: nn.Module, decoder: nn.Module, encoder: nn.Module, target: int, seed: int) -> None:
    """Shift the decoder's output bias so that a sampled structure has about ``target`` active voxels."""
    from .trellis.sampler import FlowEulerSampler

    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, 3, 518, 518, generator=g)
    cond = encoder(pixels)
    noise = torch.randn(1, 8, 16, 16, 16, generator=g)
    z = FlowEulerSampler(1e-5).sample(flow, noise, cond, steps=4, cfg_strength=3.0, cfg_interval=(0.5, 1.0),
                                      rescale_t=3.0, progress=False).samples
    logits = decoder(z).flatten()
    threshold = torch.topk(logits, target).values[-1]
    decoder.out_layer[-1].bias -= threshold - 1e-3


def write_tiny_model(path: Union[str, Path], seed: int = 0, target_voxels: int = 1000) -> Path:
    """Write the tiny random model to ``path`` (a folder); returns the folder."""
    g = torch.Generator().manual_seed(seed)
    networks = {}
    built = {}
    for key, (ckpt, cls, args) in TINY_NETWORKS.items():
        model = build(cls, **{**args, "use_fp16": False})
        randomize_(model, g)
        built[key] = model
        networks[key] = (model, ckpt, cls, args)
    encoder = DinoV2Encoder(**TINY_ENCODER).eval()
    randomize_(encoder, g)
    _calibrate_structure(built["sparse_structure_flow_model"], built["sparse_structure_decoder"], encoder, target_voxels, seed)
    params = {"steps": 4, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    return write_pipeline(
        path,
        networks,
        (encoder, "image_cond_model_tiny"),
        ss_sampler={**TINY_SAMPLER, "params": {**params, "cfg_strength": 7.5}},
        slat_sampler={**TINY_SAMPLER, "params": params},
        slat_normalization={"mean": [0.0] * 8, "std": [1.0] * 8},
        fuse3d_meta={"model_name": TINY_MODEL_NAME,
                     "description": "tiny random-weight TRELLIS-architecture model written by fuse3d.testing; outputs are meaningless"},
    )


def shell_structure(target_voxels: int = 20000, resolution: int = 64) -> torch.Tensor:
    """A fixed, realistic-looking structure: a thick spherical shell with about ``target_voxels`` voxels.

    Returns coords ``[N, 4]`` int32 (batch 0), sorted as a sampled structure would be. TRELLIS
    structures are surface shells, so a shell is a fair stand-in for benchmarks.
    """
    axis = torch.arange(resolution, dtype=torch.float32) - (resolution - 1) / 2
    r = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    outer = resolution * 0.45
    # choose the thickness whose shell volume is closest to the target
    best = None
    for tenth in range(5, 200):
        t = tenth / 10
        n = int(((r <= outer) & (r > outer - t)).sum())
        if best is None or abs(n - target_voxels) < abs(best[1] - target_voxels):
            best = (t, n)
    occ = (r <= outer) & (r > outer - best[0])
    xyz = torch.argwhere(occ)
    return torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], dim=1).int()

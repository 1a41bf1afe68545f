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
from typing import Union

import torch
import torch.nn as nn

from .trellis.architectures import TINY
from .trellis.checkpoint import save_network
from .trellis.pipeline import write_pipeline
from .trellis.registry import build

TINY_MODEL_NAME = "fuse3d-tiny-random"
TINY_WIDTH = TINY.width  # DINOv2 width = flows' cond_channels
#: the order in which write_tiny_model draws the networks' random weights
TINY_DRAW_ORDER = ("ss_flow", "ss_decoder", "slat_flow", "slat_decoder_gs", "slat_decoder_mesh", "slat_decoder_rf")
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
    built = {name: randomize_(TINY.build(name), g) for name in TINY_DRAW_ORDER}
    networks = {TINY.networks[n].key: (m, TINY.ckpt(n), TINY.networks[n].cls, TINY.networks[n].args)
                for n, m in built.items()}
    encoder = TINY.build_encoder().eval()
    randomize_(encoder, g)
    _calibrate_structure(built["ss_flow"], built["ss_decoder"], encoder, target_voxels, seed)
    params = {"steps": 4, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    # a SLAT encoder that reads patch features, as the published one does (drawn last: the networks
    # above keep their weights)
    enc = TINY.networks["slat_encoder"]
    slat_args = {**enc.args, "in_channels": encoder.width}
    slat_encoder = randomize_(build(enc.cls, **{**slat_args, "use_fp16": False}), g)
    save_network(slat_encoder, Path(path) / "ckpts" / TINY.ckpt("slat_encoder"), enc.cls, slat_args)
    return write_pipeline(
        path,
        networks,
        (encoder, TINY.ckpt("image_cond_model")),
        ss_sampler={**TINY_SAMPLER, "params": {**params, "cfg_strength": 7.5}},
        slat_sampler={**TINY_SAMPLER, "params": params},
        slat_normalization={"mean": [0.0] * 8, "std": [1.0] * 8},
        fuse3d_meta={"model_name": TINY_MODEL_NAME,
                     "description": "tiny random-weight TRELLIS-architecture model written by fuse3d.tiny_model; outputs are meaningless",
                     "slat_encoder": f"ckpts/{TINY.ckpt('slat_encoder')}", "slat_encoder_input": "patch_features"},
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

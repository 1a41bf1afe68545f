"""fuse3d's own TRELLIS-architecture models, written in one config format.

An :class:`Architecture` names every network of a model (the classes of TRELLIS-image-large at
another width), whether ``pipeline.json`` exports it (training-only networks such as the
autoencoders' encoders have no key), and the DINOv2-architecture condition encoder. The layouts
never change: 518² images (1374 tokens), a 16³ structure latent, 64³ voxels, 32³ cells.

- :data:`TINY`: random weights, for tests (``fuse3d.tiny_model.write_tiny_model``); also trainable, so
  the trainer's tests train it.
- :data:`SMALL`: the bundled model's recipe (``python -m fuse3d.train.train``): heads of width 32
  (4 per block), so that each head's attention can carry a match, within the 20 MB folder budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from .registry import build
from .vae import gaussian_representation_config

ENCODER_ARCH = "vit_small_patch14_reg4_dinov2"


@dataclass(frozen=True)
class Network:
    """One network: its ``pipeline.json`` key (``None``: training-only), class name and arguments."""

    key: Optional[str]
    cls: str
    args: dict


@dataclass(frozen=True)
class Architecture:
    """A model's networks (keyed by fuse3d's short names) and its condition encoder's arguments.

    Checkpoint files are ``ckpts/<short name>_<name>``.
    """

    name: str
    networks: Dict[str, Network]
    encoder: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        """The condition tokens' width (= the flows' ``cond_channels``)."""
        return int(self.encoder["embed_dim"])

    def ckpt(self, net: str) -> str:
        return f"{net}_{self.name}"

    def exported(self) -> Dict[str, Network]:
        return {n: net for n, net in self.networks.items() if net.key is not None}

    def build(self, net: str, device="cpu") -> torch.nn.Module:
        """A fresh network in float32 (``use_fp16`` off: training and tests keep fp32 weights)."""
        spec = self.networks[net]
        with torch.device(device):
            return build(spec.cls, **{**spec.args, "use_fp16": False})

    def build_encoder(self, device="cpu") -> torch.nn.Module:
        from .dinov2 import DinoV2Encoder

        with torch.device(device):
            return DinoV2Encoder(**self.encoder)


def _flows(width: int, cond: int, ss: dict, slat: dict) -> Dict[str, Network]:
    return {
        "ss_flow": Network("sparse_structure_flow_model", "SparseStructureFlowModel", dict(
            resolution=16, in_channels=8, out_channels=8, model_channels=width, cond_channels=cond, mlp_ratio=4,
            pe_mode="ape", qk_rms_norm=True, use_fp16=True, **ss)),
        "slat_flow": Network("slat_flow_model", "SLatFlowModel", dict(
            resolution=64, in_channels=8, out_channels=8, model_channels=width, cond_channels=cond, patch_size=2,
            num_io_res_blocks=2, pe_mode="ape", qk_rms_norm=True, use_fp16=True, **slat)),
    }


def _swin(**args) -> dict:
    return dict(resolution=64, latent_channels=8, attn_mode="swin", window_size=8, use_fp16=True, **args)


TINY = Architecture(
    "tiny",
    {   # the exported networks first, in the order write_tiny_model draws their random weights
        **_flows(64, 64, dict(num_blocks=2, num_heads=4, patch_size=1),
                 dict(num_blocks=2, num_heads=16, mlp_ratio=2, io_block_channels=[16])),
        "ss_decoder": Network("sparse_structure_decoder", "SparseStructureDecoder", dict(
            out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[32, 16, 8],
            use_fp16=True)),
        "slat_decoder_gs": Network("slat_decoder_gs", "SLatGaussianDecoder", _swin(
            model_channels=32, num_blocks=1, num_heads=2, mlp_ratio=2, representation_config=gaussian_representation_config(8))),
        "slat_decoder_mesh": Network("slat_decoder_mesh", "SLatMeshDecoder", _swin(
            model_channels=256, num_blocks=1, num_heads=4, mlp_ratio=1, representation_config={"use_color": True})),
        "slat_decoder_rf": Network("slat_decoder_rf", "SLatRadianceFieldDecoder", _swin(
            model_channels=32, num_blocks=1, num_heads=2, mlp_ratio=2, representation_config={"rank": 4, "dim": 8})),
        "ss_encoder": Network(None, "SparseStructureEncoder", dict(
            in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 16, 32], use_fp16=True)),
        "slat_encoder": Network(None, "SLatEncoder", _swin(
            in_channels=6, model_channels=32, num_blocks=1, num_heads=2, mlp_ratio=2)),
    },
    dict(arch=ENCODER_ARCH, img_size=518, embed_dim=64, depth=2, num_heads=4),
)

SMALL = Architecture(
    "small",
    {
        "ss_encoder": Network(None, "SparseStructureEncoder", dict(
            in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[16, 32, 64], use_fp16=True)),
        "ss_decoder": Network("sparse_structure_decoder", "SparseStructureDecoder", dict(
            out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[64, 32, 16], use_fp16=True)),
        "slat_encoder": Network(None, "SLatEncoder", _swin(
            in_channels=6, model_channels=64, num_blocks=2, num_heads=4, mlp_ratio=2)),
        "slat_decoder_gs": Network("slat_decoder_gs", "SLatGaussianDecoder", _swin(
            model_channels=64, num_blocks=2, num_heads=4, mlp_ratio=2, representation_config=gaussian_representation_config(8))),
        "slat_decoder_mesh": Network("slat_decoder_mesh", "SLatMeshDecoder", _swin(
            model_channels=256, num_blocks=1, num_heads=4, mlp_ratio=2, representation_config={"use_color": True})),
        **_flows(128, 128, dict(num_blocks=6, num_heads=4, patch_size=2),
                 dict(num_blocks=6, num_heads=4, mlp_ratio=4, io_block_channels=[32])),
    },
    dict(arch=ENCODER_ARCH, img_size=518, embed_dim=128, depth=6, num_heads=4),
)

ARCHITECTURES = {a.name: a for a in (TINY, SMALL)}

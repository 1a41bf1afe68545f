"""TRELLIS autoencoders: the dense sparse-structure VAE and the structured-latent (SLAT) VAE.

The latent decoders stop at :meth:`decode_features` — the raw per-voxel network output — and
describe its channel layout in ``feature_layout``; turning it into Gaussians or a mesh is the job of
:mod:`fuse3d.assets`, which needs none of the CUDA-only extensions the published code uses.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import (
    AbsolutePositionEmbedder,
    ChannelLayerNorm32,
    GroupNorm32,
    SparseTransformerBlock,
    TorsoDtypeMixin,
    init_transformer_weights,
    zero_module,
)
from .sparse import SparseConv3d, SparseGroupNorm32, SparseLinear, SparseSiLU, SparseSubdivide, SparseTensor


# ============================================================================ sparse structure VAE
def _norm(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "group":
        return GroupNorm32(32, channels)
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    raise ValueError(f"norm_type must be 'group' or 'layer', got {norm_type!r}")


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: Optional[int] = None, norm_type: str = "layer"):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = _norm(norm_type, channels)
        self.norm2 = _norm(norm_type, out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = zero_module(nn.Conv3d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv"):
        super().__init__()
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)
        elif mode != "avgpool" or in_channels != out_channels:
            raise ValueError(f"invalid downsample mode {mode!r} for {in_channels}->{out_channels} channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if hasattr(self, "conv") else F.avg_pool3d(x, 2)


def pixel_shuffle_3d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, C·f³, R, R, R]`` → ``[B, C, R·f, R·f, R·f]``."""
    b, c, h, w, d = x.shape
    c_ = c // factor**3
    x = x.reshape(b, c_, factor, factor, factor, h, w, d).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_, h * factor, w * factor, d * factor)


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv"):
        super().__init__()
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)
        elif mode != "nearest" or in_channels != out_channels:
            raise ValueError(f"invalid upsample mode {mode!r} for {in_channels}->{out_channels} channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return pixel_shuffle_3d(self.conv(x), 2)
        return F.interpolate(x, scale_factor=2, mode="nearest")


class SparseStructureEncoder(TorsoDtypeMixin, nn.Module):
    """Occupancy grid ``[B, 1, 64, 64, 64]`` → latent ``[B, latent_channels, 16, 16, 16]``."""

    _torso = ("blocks", "middle_block")

    def __init__(self, in_channels: int, latent_channels: int, num_res_blocks: int, channels: List[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.dtype = torch.float32
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch, norm_type) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1], channels[-1], norm_type) for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(_norm(norm_type, channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1))
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False):
        h = self.input_layer(x).type(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = self.out_layer(h.type(x.dtype))
        mean, logvar = h.chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        return (z, mean, logvar) if return_raw else z


class SparseStructureDecoder(TorsoDtypeMixin, nn.Module):
    """Latent ``[B, latent_channels, r, r, r]`` → occupancy logits ``[B, out_channels, 4r, 4r, 4r]``.

    Active voxels are where the logits are positive.
    """

    _torso = ("blocks", "middle_block")

    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int, channels: List[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.dtype = torch.float32
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0], channels[0], norm_type) for _ in range(num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch, norm_type) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(_norm(norm_type, channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], out_channels, 3, padding=1))
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"SparseStructureDecoder expects z [B, {self.latent_channels}, r, r, r], got {tuple(z.shape)}")
        h = self.input_layer(z).type(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.type(z.dtype))


# ============================================================================ structured latent VAE
def _swin_blocks(model_channels: int, num_blocks: int, num_heads: int, mlp_ratio: float, attn_mode: str,
                 window_size: Optional[int], qk_rms_norm: bool) -> nn.ModuleList:
    if attn_mode not in ("full", "swin"):
        raise NotImplementedError(f"attn_mode={attn_mode!r}: only 'full' and 'swin' are implemented")
    blocks = []
    for i in range(num_blocks):
        if attn_mode == "swin":
            shift = window_size // 2 * (i % 2)
            blocks.append(SparseTransformerBlock(model_channels, num_heads, mlp_ratio, "windowed", window_size, shift, qk_rms_norm))
        else:
            blocks.append(SparseTransformerBlock(model_channels, num_heads, mlp_ratio, "full", None, 0, qk_rms_norm))
    return nn.ModuleList(blocks)


class SparseTransformerBase(TorsoDtypeMixin, nn.Module):
    """Input layer + absolute position embedding + sparse transformer blocks (shifted windows)."""

    _torso = ("blocks",)

    def __init__(self, in_channels: int, model_channels: int, num_blocks: int, num_heads: Optional[int] = None,
                 num_head_channels: Optional[int] = 64, mlp_ratio: float = 4.0, attn_mode: str = "swin",
                 window_size: Optional[int] = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False):
        super().__init__()
        if pe_mode != "ape":
            raise NotImplementedError(f"pe_mode={pe_mode!r}: only 'ape' is implemented")
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.window_size = window_size
        self.dtype = torch.float32
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = SparseLinear(in_channels, model_channels)
        self.blocks = _swin_blocks(model_channels, num_blocks, self.num_heads, mlp_ratio, attn_mode, window_size, qk_rms_norm)

    def _check_input(self, x: SparseTensor) -> None:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"{type(self).__name__} expects a SparseTensor")
        if x.feats.ndim != 2 or x.feats.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects feats [N, {self.in_channels}], got {tuple(x.feats.shape)}")

    def forward_blocks(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        h = self.input_layer(x)
        h = h.replace(h.feats + self.pos_embedder(x.coords[:, 1:]))
        h = h.type(self.dtype)
        for block in self.blocks:
            h = block(h)
        return h


class SLatEncoder(SparseTransformerBase):
    """Per-voxel features → structured latent (mean and log-variance)."""

    def __init__(self, resolution: int, in_channels: int, model_channels: int, latent_channels: int,
                 num_blocks: int, num_heads: Optional[int] = None, num_head_channels: Optional[int] = 64,
                 mlp_ratio: float = 4, attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape",
                 use_fp16: bool = False, use_checkpoint: bool = False, qk_rms_norm: bool = False):
        super().__init__(in_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio,
                         attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm)
        self.resolution = resolution
        self.latent_channels = latent_channels
        self.out_layer = SparseLinear(model_channels, 2 * latent_channels)
        init_transformer_weights(self)
        zero_module(self.out_layer)
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: SparseTensor, sample_posterior: bool = True, return_raw: bool = False):
        h = self.forward_blocks(x).type(x.dtype)
        h = self.out_layer(h.replace(F.layer_norm(h.feats, h.feats.shape[-1:])))
        mean, logvar = h.feats.chunk(2, dim=-1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        z = h.replace(z)
        return (z, mean, logvar) if return_raw else z


class _LatentDecoder(SparseTransformerBase):
    """A SLAT decoder: ``decode_features(slat) -> SparseTensor`` of raw per-voxel outputs.

    ``feature_layout`` maps each output field to ``(start, stop, per-voxel shape)`` in the channel
    axis of :meth:`decode_features`'s output.
    """

    feature_layout: Dict[str, Tuple[int, int, Tuple[int, ...]]]

    def _set_layout(self, fields: List[Tuple[str, Tuple[int, ...]]]) -> int:
        self.feature_layout, start = {}, 0
        for name, shape in fields:
            size = 1
            for s in shape:
                size *= s
            self.feature_layout[name] = (start, start + size, shape)
            start += size
        return start

    def field(self, out: SparseTensor, name: str) -> torch.Tensor:
        """One field of :meth:`decode_features`'s output, reshaped to ``[N, *shape]``."""
        start, stop, shape = self.feature_layout[name]
        return out.feats[:, start:stop].reshape(-1, *shape)

    def decode_features(self, x: SparseTensor) -> SparseTensor:
        h = self.forward_blocks(x).type(x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.decode_features(x)


def gaussian_representation_config(num_gaussians: int = 32) -> dict:
    """The Gaussian decoder's ``representation_config`` as TRELLIS-image-large publishes it."""
    return {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
            "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": num_gaussians, "2d_filter_kernel_size": 0.1,
            "3d_filter_kernel_size": 0.0009, "scaling_bias": 0.004, "opacity_bias": 0.1, "scaling_activation": "softplus"}


def hammersley_points(n: int) -> torch.Tensor:
    """``[n, 3]`` Hammersley points: ``(i/n, radical inverse of i in base 2, in base 3)``."""

    def radical_inverse(base: int, i: int) -> float:
        value, scale = 0.0, 1.0 / base
        while i > 0:
            value += (i % base) * scale
            i //= base
            scale /= base
        return value

    return torch.tensor([[i / n, radical_inverse(2, i), radical_inverse(3, i)] for i in range(n)], dtype=torch.float64)


class SLatGaussianDecoder(_LatentDecoder):
    """SLAT → ``num_gaussians`` 3D Gaussians per voxel.

    Output fields per voxel (in this channel order): ``xyz [G, 3]`` offsets, ``features_dc [G, 1, 3]``,
    ``scaling [G, 3]``, ``rotation [G, 4]``, ``opacity [G, 1]``. ``offset_perturbation [G, 3]`` is a
    fixed buffer (atanh of Hammersley points scaled by ``1/voxel_size``) the checkpoints carry.
    """

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: Optional[int] = None, num_head_channels: Optional[int] = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False, representation_config: Optional[dict] = None):
        super().__init__(latent_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio,
                         attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm)
        self.resolution = resolution
        self.rep_config = dict(representation_config or {})
        g = self.rep_config["num_gaussians"]
        out_channels = self._set_layout(
            [("xyz", (g, 3)), ("features_dc", (g, 1, 3)), ("scaling", (g, 3)), ("rotation", (g, 4)), ("opacity", (g, 1))]
        )
        self.out_layer = SparseLinear(model_channels, out_channels)
        perturbation = (hammersley_points(g) * 2 - 1) / self.rep_config["voxel_size"]
        self.register_buffer("offset_perturbation", torch.atanh(perturbation).float())
        init_transformer_weights(self)
        zero_module(self.out_layer)
        if use_fp16:
            self.convert_to_fp16()


class SLatRadianceFieldDecoder(_LatentDecoder):
    """SLAT → rank-``rank`` radiance-field factors per voxel.

    Fields: ``trivec [rank, 3, dim]``, ``density [rank]``, ``features_dc [rank, 1, 3]``.
    """

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: Optional[int] = None, num_head_channels: Optional[int] = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False, representation_config: Optional[dict] = None):
        super().__init__(latent_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio,
                         attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm)
        self.resolution = resolution
        self.rep_config = dict(representation_config or {})
        r, d = self.rep_config["rank"], self.rep_config["dim"]
        out_channels = self._set_layout([("trivec", (r, 3, d)), ("density", (r,)), ("features_dc", (r, 1, 3))])
        self.out_layer = SparseLinear(model_channels, out_channels)
        init_transformer_weights(self)
        zero_module(self.out_layer)
        if use_fp16:
            self.convert_to_fp16()


class SparseSubdivideBlock3d(nn.Module):
    """GroupNorm + SiLU, subdivide every voxel into 8, then a sparse conv residual block."""

    def __init__(self, channels: int, resolution: int, out_channels: Optional[int] = None, num_groups: int = 32):
        super().__init__()
        self.out_channels = out_channels or channels
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels), SparseSiLU())
        self.sub = SparseSubdivide()
        self.out_layers = nn.Sequential(
            SparseConv3d(channels, self.out_channels, 3),
            SparseGroupNorm32(num_groups, self.out_channels),
            SparseSiLU(),
            zero_module(SparseConv3d(self.out_channels, self.out_channels, 3)),
        )
        self.skip_connection = nn.Identity() if self.out_channels == channels else SparseConv3d(channels, self.out_channels, 1)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.sub(self.act_layers(x))
        return self.out_layers(h) + self.skip_connection(self.sub(x))


class SLatMeshDecoder(_LatentDecoder):
    """SLAT → FlexiCubes features on voxels subdivided twice (``4·resolution``³ grid).

    Output fields per fine voxel: ``sdf [8]`` (one per cube corner, before the ``-1/(4·resolution)``
    bias), ``deform [8, 3]``, ``weights [21]``, and with ``use_color`` ``color [8, 6]``.
    Corners are ordered ``(dx, dy, dz) = (0,0,0), (1,0,0), (0,1,0), (1,1,0), (0,0,1), …`` (x fastest).
    """

    _torso = ("blocks", "upsample")

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: Optional[int] = None, num_head_channels: Optional[int] = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False, representation_config: Optional[dict] = None):
        super().__init__(latent_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio,
                         attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm)
        self.resolution = resolution
        self.rep_config = dict(representation_config or {})
        self.use_color = bool(self.rep_config.get("use_color", False))
        fields = [("sdf", (8,)), ("deform", (8, 3)), ("weights", (21,))]
        if self.use_color:
            fields.append(("color", (8, 6)))
        out_channels = self._set_layout(fields)
        self.upsample = nn.ModuleList([
            SparseSubdivideBlock3d(model_channels, resolution, out_channels=model_channels // 4),
            SparseSubdivideBlock3d(model_channels // 4, resolution * 2, out_channels=model_channels // 8),
        ])
        self.out_layer = SparseLinear(model_channels // 8, out_channels)
        init_transformer_weights(self)
        zero_module(self.out_layer)
        if use_fp16:
            self.convert_to_fp16()

    def decode_features(self, x: SparseTensor) -> SparseTensor:
        h = self.forward_blocks(x)
        for block in self.upsample:
            h = block(h)
        return self.out_layer(h.type(x.dtype))

"""The two TRELLIS flow transformers: sparse structure (dense 3D grid) and structured latent (sparse).

Both are called ``model(x, t, cond)`` with ``t`` already multiplied by 1000 and ``cond`` the image
tokens ``[B, tokens, cond_channels]``; they return the predicted velocity in the shape of ``x``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import (
    AbsolutePositionEmbedder,
    LayerNorm32,
    ModulatedTransformerCrossBlock,
    TimestepEmbedder,
    TorsoDtypeMixin,
    init_transformer_weights,
    per_sample,
    zero_module,
)
from .sparse import SparseConv3d, SparseDownsample, SparseLinear, SparseTensor, SparseUpsample


def _check_pe(pe_mode: str) -> None:
    if pe_mode != "ape":
        raise NotImplementedError(f"pe_mode={pe_mode!r}: only absolute position embedding ('ape') is implemented")


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, R, R, R]`` → ``[B, C·p³, R/p, R/p, R/p]`` (channel, then in-patch offset order)."""
    if p == 1:
        return x
    b, c, *r = x.shape
    x = x.reshape(b, c, r[0] // p, p, r[1] // p, p, r[2] // p, p)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * p**3, r[0] // p, r[1] // p, r[2] // p)


def _unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    if p == 1:
        return x
    b, c, *r = x.shape
    x = x.reshape(b, c // p**3, p, p, p, *r)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // p**3, r[0] * p, r[1] * p, r[2] * p)


class _FlowBase(TorsoDtypeMixin, nn.Module):
    def _setup(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int, out_channels: int,
               num_blocks: int, num_heads: Optional[int], num_head_channels: Optional[int], patch_size: int,
               share_mod: bool, use_fp16: bool, pe_mode: str) -> None:
        """What both flows keep: their sizes, the timestep embedder and the shared modulation."""
        _check_pe(pe_mode)
        self.resolution = resolution
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.cond_channels = cond_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.patch_size = patch_size
        self.share_mod = share_mod
        self.use_fp16 = use_fp16
        self.dtype = torch.float32
        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))

    def _cross_blocks(self, mlp_ratio: float, qk_rms_norm: bool, qk_rms_norm_cross: bool) -> nn.ModuleList:
        """The ``num_blocks`` modulated self- and cross-attention blocks (``blocks.i``)."""
        return nn.ModuleList(
            ModulatedTransformerCrossBlock(self.model_channels, self.cond_channels, num_heads=self.num_heads,
                                           mlp_ratio=mlp_ratio, qk_rms_norm=qk_rms_norm,
                                           qk_rms_norm_cross=qk_rms_norm_cross, share_mod=self.share_mod)
            for _ in range(self.num_blocks))

    def _init_flow_weights(self) -> None:
        init_transformer_weights(self)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            zero_module(block.adaLN_modulation[-1])
        zero_module(self.out_layer)

    def _time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        return t_emb.type(self.dtype)


class SparseStructureFlowModel(_FlowBase):
    """Flow transformer on the dense ``[B, C, R, R, R]`` sparse-structure latent.

    ``blocks.i`` are :class:`ModulatedTransformerCrossBlock` s over the ``(R/patch)³`` grid tokens in
    ``(x, y, z)`` C order, with a fixed absolute positional embedding buffer ``pos_emb``.
    """

    _torso = ("blocks",)

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: Optional[int] = None,
        num_head_channels: Optional[int] = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ):
        super().__init__()
        self._setup(resolution, in_channels, model_channels, cond_channels, out_channels, num_blocks, num_heads,
                    num_head_channels, patch_size, share_mod, use_fp16, pe_mode)
        grid = resolution // patch_size
        axes = [torch.arange(grid)] * 3
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("pos_emb", AbsolutePositionEmbedder(model_channels, 3)(coords))
        self.input_layer = nn.Linear(in_channels * patch_size**3, model_channels)
        self.blocks = self._cross_blocks(mlp_ratio, qk_rms_norm, qk_rms_norm_cross)
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**3)
        self._init_flow_weights()
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x [B, C, R, R, R]``, ``t [B]`` (×1000), ``cond [B, tokens, C_cond]`` → velocity like ``x``."""
        expected = [self.in_channels] + [self.resolution] * 3
        if x.ndim != 5 or list(x.shape[1:]) != expected:
            raise ValueError(f"SparseStructureFlowModel expects x [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        b = x.shape[0]
        h = _patchify(x, self.patch_size)
        h = h.reshape(b, h.shape[1], -1).permute(0, 2, 1)
        h = self.input_layer(h) + self.pos_emb[None]
        t_emb = self._time_embedding(t)
        h = h.type(self.dtype)
        cond = cond.type(self.dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond)
        h = F.layer_norm(h.type(x.dtype), h.shape[-1:])
        h = self.out_layer(h)
        grid = self.resolution // self.patch_size
        h = h.permute(0, 2, 1).reshape(b, h.shape[2], grid, grid, grid)
        return _unpatchify(h, self.patch_size)


class SparseResBlock3d(nn.Module):
    """Sparse residual block with timestep scale/shift, optionally down- or upsampling first."""

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None,
                 downsample: bool = False, upsample: bool = False):
        super().__init__()
        if downsample and upsample:
            raise ValueError("a res block cannot both downsample and upsample")
        self.out_channels = out_channels or channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(self.out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, self.out_channels, 3)
        self.conv2 = zero_module(SparseConv3d(self.out_channels, self.out_channels, 3))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels))
        self.skip_connection = (
            SparseLinear(channels, self.out_channels) if channels != self.out_channels else nn.Identity()
        )
        self.updown = SparseDownsample(2) if downsample else SparseUpsample(2) if upsample else None

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        scale, shift = self.emb_layers(emb).type(x.dtype).chunk(2, dim=1)
        if self.updown is not None:
            x = self.updown(x)
        h = x.replace(F.silu(self.norm1(x.feats)))
        h = self.conv1(h)
        h = h.replace(F.silu(self.norm2(h.feats) * (1 + per_sample(h, scale)) + per_sample(h, shift)))
        h = self.conv2(h)
        return h + self.skip_connection(x)


class SLatFlowModel(_FlowBase):
    """Flow transformer on the structured latent (sparse voxels at ``resolution³``).

    Input res blocks bring the voxels to ``patch_size``× coarser *cells* (cell = ``coord // 2``),
    the transformer ``blocks`` run on the cells with absolute positional encoding of the cell
    coordinates — so the cross-attention queries are cells — and output res blocks return to the
    voxels with skip connections.
    """

    _torso = ("input_blocks", "blocks", "out_blocks")

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: Optional[int] = None,
        num_head_channels: Optional[int] = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        num_io_res_blocks: int = 2,
        io_block_channels: Optional[List[int]] = None,
        pe_mode: str = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        use_skip_connection: bool = True,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
    ):
        super().__init__()
        if io_block_channels is not None and 2 ** len(io_block_channels) != patch_size:
            raise ValueError("SLatFlowModel needs one io block stage per factor 2 of patch_size")
        self._setup(resolution, in_channels, model_channels, cond_channels, out_channels, num_blocks, num_heads,
                    num_head_channels, patch_size, share_mod, use_fp16, pe_mode)
        self.use_skip_connection = use_skip_connection
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        first = model_channels if io_block_channels is None else io_block_channels[0]
        self.input_layer = SparseLinear(in_channels, first)

        self.input_blocks = nn.ModuleList()
        self.out_blocks = nn.ModuleList()
        if io_block_channels is not None:
            for chs, next_chs in zip(io_block_channels, io_block_channels[1:] + [model_channels]):
                self.input_blocks.extend(
                    SparseResBlock3d(chs, model_channels, out_channels=chs) for _ in range(num_io_res_blocks - 1)
                )
                self.input_blocks.append(SparseResBlock3d(chs, model_channels, out_channels=next_chs, downsample=True))
            skip = 2 if use_skip_connection else 1
            prevs = [model_channels] + list(reversed(io_block_channels[1:]))
            for chs, prev_chs in zip(reversed(io_block_channels), prevs):
                self.out_blocks.append(SparseResBlock3d(prev_chs * skip, model_channels, out_channels=chs, upsample=True))
                self.out_blocks.extend(
                    SparseResBlock3d(chs * skip, model_channels, out_channels=chs) for _ in range(num_io_res_blocks - 1)
                )

        self.blocks = self._cross_blocks(mlp_ratio, qk_rms_norm, qk_rms_norm_cross)
        self.out_layer = SparseLinear(first, out_channels)
        self._init_flow_weights()
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> SparseTensor:
        """``x`` sparse ``[N, in_channels]``, ``t [B]`` (×1000), ``cond [B, tokens, C]`` → velocity on ``x``'s voxels."""
        if not isinstance(x, SparseTensor):
            raise TypeError("SLatFlowModel expects a SparseTensor input")
        if x.feats.ndim != 2 or x.feats.shape[1] != self.in_channels:
            raise ValueError(f"SLatFlowModel expects feats [N, {self.in_channels}], got {tuple(x.feats.shape)}")
        h = self.input_layer(x).type(self.dtype)
        t_emb = self._time_embedding(t)
        cond = cond.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        h = h.replace(h.feats + self.pos_embedder(h.coords[:, 1:]).type(self.dtype))
        for block in self.blocks:
            h = block(h, t_emb, cond)
        for block, skip in zip(self.out_blocks, reversed(skips)):
            if self.use_skip_connection:
                h = h.replace(torch.cat([h.feats, skip], dim=1))
            h = block(h, t_emb)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h.type(x.dtype))

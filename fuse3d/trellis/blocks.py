"""Transformer building blocks shared by the TRELLIS networks (dense and sparse inputs alike).

A block works on "rows": a dense ``[B, L, C]`` tensor or the ``[N, C]`` features of a
:class:`~fuse3d.trellis.sparse.SparseTensor`. Per-sample vectors such as adaLN modulation
(``[B, C]``) are broadcast to the rows of their sample by :func:`per_sample`.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from .sparse import SparseConv3d, SparseTensor

Rows = Union[torch.Tensor, SparseTensor]

FP16_MODULES = (nn.Linear, nn.Conv3d, SparseConv3d)


def convert_module_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters of linear and convolution layers below ``module`` (norms stay float32)."""
    for m in module.modules():
        if isinstance(m, FP16_MODULES):
            for p in m.parameters():
                p.data = p.data.to(dtype)


class TorsoDtypeMixin:
    """Networks whose "torso" (transformer or conv blocks) may run in half precision, as published.

    Subclasses list their torso submodule names in ``_torso``; ``self.dtype`` is the torso dtype.
    """

    _torso: tuple = ("blocks",)
    dtype: torch.dtype = torch.float32

    def set_torso_dtype(self, dtype: torch.dtype) -> None:
        for name in self._torso:
            convert_module_dtype(getattr(self, name), dtype)
        self.dtype = dtype

    def convert_to_fp16(self) -> None:
        self.set_torso_dtype(torch.float16)

    def convert_to_fp32(self) -> None:
        self.set_torso_dtype(torch.float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def feats(x: Rows) -> torch.Tensor:
    return x.feats if isinstance(x, SparseTensor) else x


def with_feats(x: Rows, f: torch.Tensor) -> Rows:
    return x.replace(f) if isinstance(x, SparseTensor) else f


def per_sample(x: Rows, v: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample ``[B, C]`` vector to the rows of ``x``."""
    if isinstance(x, SparseTensor):
        return v.index_select(0, x.batch_index)
    return v[:, None, :]


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel axis of a ``[B, C, *spatial]`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.dim()
        x = x.permute(0, *range(2, d), 1)
        x = super().forward(x)
        return x.permute(0, d - 1, *range(1, d - 1)).contiguous()


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of ``t`` (already ×1000) followed by a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """``[B]`` → ``[B, dim]``: ``cos`` of ``t·f_i`` then ``sin``, ``f_i = max_period^(-i/half)``."""
        half = dim // 2
        freqs = torch.exp(-np.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class AbsolutePositionEmbedder(nn.Module):
    """Sinusoidal embedding of integer 3D positions: ``[N, 3]`` → ``[N, channels]``.

    Each axis gets ``channels // 6`` frequencies (``sin`` then ``cos``); the rest is zero-padded.
    """

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels
        self.freq_dim = channels // in_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        if d != self.in_channels:
            raise ValueError(f"expected positions [N, {self.in_channels}], got {tuple(x.shape)}")
        freqs = 1.0 / (10000 ** (torch.arange(self.freq_dim, dtype=torch.float32, device=x.device) / self.freq_dim))
        out = torch.outer(x.reshape(-1).float(), freqs)
        out = torch.cat([torch.sin(out), torch.cos(out)], dim=-1).reshape(n, -1)
        if out.shape[1] < self.channels:
            out = torch.cat([out, out.new_zeros(n, self.channels - out.shape[1])], dim=-1)
        return out


class FeedForwardNet(nn.Module):
    """``Linear → GELU(tanh) → Linear`` (parameters under ``mlp.0`` and ``mlp.2``)."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: Rows) -> Rows:
        return with_feats(x, self.mlp(feats(x)))


class ModulatedTransformerCrossBlock(nn.Module):
    """Self-attention → cross-attention → MLP with adaLN modulation from the timestep.

    ``x ← x + gate_msa · SelfAttn(modulate(norm1(x)))``; ``x ← x + CrossAttn(norm2(x), cond)``
    (``norm2`` is affine, no modulation); ``x ← x + gate_mlp · MLP(modulate(norm3(x)))``.
    Works on dense ``[B, L, C]`` and sparse inputs; modules are ``self_attn``, ``cross_attn``, ``mlp``.
    """

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        share_mod: bool = False,
    ):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(channels, num_heads, type="self", qk_rms_norm=qk_rms_norm)
        self.cross_attn = MultiHeadAttention(
            channels, num_heads, ctx_channels=ctx_channels, type="cross", qk_rms_norm=qk_rms_norm_cross
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def forward(self, x: Rows, mod: torch.Tensor, context: torch.Tensor) -> Rows:
        if isinstance(x, SparseTensor) and x.uniform_length is not None:
            # Batch elements of equal size: run the dense path on a free [B, L, C] view.
            dense = x.feats.view(x.batch_size, x.uniform_length, x.feats.shape[-1])
            return x.replace(self.forward(dense, mod, context).reshape(x.feats.shape))
        if not self.share_mod:
            mod = self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            per_sample(x, m) for m in mod.chunk(6, dim=1)
        )
        f = feats(x)
        h = self.norm1(f) * (1 + scale_msa) + shift_msa
        h = feats(self.self_attn(with_feats(x, h)))
        f = f + h * gate_msa
        h = feats(self.cross_attn(with_feats(x, self.norm2(f)), context))
        f = f + h
        h = self.norm3(f) * (1 + scale_mlp) + shift_mlp
        f = f + self.mlp.mlp(h) * gate_mlp
        return with_feats(x, f)


class SparseTransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP on sparse inputs (the latent decoders' block)."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        attn_mode: str = "full",
        window_size: Optional[int] = None,
        shift_window: int = 0,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(
            channels,
            num_heads,
            type="self",
            attn_mode=attn_mode,
            window_size=window_size,
            shift_window=shift_window,
            qk_rms_norm=qk_rms_norm,
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        f = x.feats
        f = f + self.attn(x.replace(self.norm1(f))).feats
        f = f + self.mlp.mlp(self.norm2(f))
        return x.replace(f)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def init_transformer_weights(model: nn.Module) -> None:
    """Xavier-uniform linear layers with zero bias (the published initialisation of fresh models)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

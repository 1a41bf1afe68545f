"""Multi-head attention with swappable processors.

Every attention module (:class:`MultiHeadAttention`) projects its inputs to queries, keys and values
and hands them to its *processor*, a small callable that returns the attention output. The default,
:class:`SDPAProcessor`, is PyTorch's fused ``scaled_dot_product_attention``. Other processors (Fuse3D's
capturing and enhancing ones live in :mod:`fuse3d.method.capture` and :mod:`fuse3d.method.kernels`) can be swapped in per module
path with :func:`set_attn_processor`, in the manner of diffusers.

Processor protocol::

    processor(attn, q, k, v, *, batch, mask=None) -> out

* ``q``: ``[b, Lq, heads, head_dim]``; ``k``, ``v``: ``[b, Lk, heads, head_dim]``; ``out`` like ``q``.
  Queries and keys are already projected (and RMS-normalised where the network does so).
* ``batch``: the ``range`` of batch elements of the module's input that these ``b`` rows are. A sparse
  input whose batch elements have different voxel counts is processed one element at a time (the
  default :class:`SDPAProcessor` instead gets one call on the batch padded to its longest element,
  with padded keys masked out).
* ``mask``: optional ``[b, 1, Lq, Lk]`` bool (True = attend; broadcastable), used on padded windows
  and padded ragged batches.
* The softmax scale is ``attn.scale`` (``1/sqrt(head_dim)``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sparse import SparseTensor

__all__ = [
    "MultiHeadAttention",
    "MultiHeadRMSNorm",
    "SDPAProcessor",
    "ExplicitProcessor",
    "attn_processors",
    "set_attn_processor",
    "window_partition",
    "use_attn_processors",
]


class SDPAProcessor:
    """Fused ``scaled_dot_product_attention`` (the default processor)."""

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=attn.scale
        )
        return out.transpose(1, 2)

    def __repr__(self) -> str:
        return "SDPAProcessor()"


class ExplicitProcessor:
    """Softmax attention written out (``softmax(q·kᵀ·scale)·v``) in float32; a readable reference."""

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * attn.scale
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)

    def __repr__(self) -> str:
        return "ExplicitProcessor()"


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS normalisation of queries or keys: ``normalize(x) · gamma · sqrt(head_dim)``."""

    def __init__(self, head_dim: int, heads: int):
        super().__init__()
        self.scale = head_dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)


def window_partition(coords: torch.Tensor, window_size: int, shift: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Group voxels into ``window_size³`` windows after shifting coordinates by ``shift``.

    Returns ``(order, window_id)``: ``order [N]`` sorts the voxels window by window (windows in
    ``(batch, wx, wy, wz)`` order) and ``window_id [N]`` is the window of each sorted voxel,
    numbered ``0..W-1``.
    """
    c = coords.long().clone()
    c[:, 1:] = (c[:, 1:] + shift) // window_size
    span = int(c[:, 1:].max().item()) + 1 if c.shape[0] else 1
    key = ((c[:, 0] * span + c[:, 1]) * span + c[:, 2]) * span + c[:, 3]
    key_sorted, order = torch.sort(key, stable=True)
    _, window_id = torch.unique_consecutive(key_sorted, return_inverse=True)
    return order, window_id


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention over dense ``[B, L, C]`` or sparse inputs.

    Args:
        channels: model width ``C`` (``heads × head_dim``).
        num_heads: number of heads.
        ctx_channels: width of the cross-attention context (cross-attention only).
        type: ``"self"`` or ``"cross"``.
        attn_mode: ``"full"`` or ``"windowed"`` (swin windows; sparse self-attention only).
        window_size, shift_window: window edge and shift for ``"windowed"``.
        qk_rms_norm: RMS-normalise queries and keys per head.

    Parameters keep the published names: ``to_qkv`` (self) or ``to_q``/``to_kv`` (cross, K is the
    first half of ``to_kv``'s output, V the second), ``q_rms_norm``/``k_rms_norm``, ``to_out``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: Optional[int] = None,
        type: str = "self",
        attn_mode: str = "full",
        window_size: Optional[int] = None,
        shift_window: int = 0,
        qkv_bias: bool = True,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        if type not in ("self", "cross"):
            raise ValueError(f"attention type must be 'self' or 'cross', got {type!r}")
        if attn_mode not in ("full", "windowed"):
            raise ValueError(f"attn_mode must be 'full' or 'windowed', got {attn_mode!r}")
        if type == "cross" and attn_mode != "full":
            raise ValueError("cross-attention supports attn_mode='full' only")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self.attn_type = type
        self.attn_mode = attn_mode
        self.window_size = window_size
        self.shift_window = shift_window
        self.qk_rms_norm = qk_rms_norm
        if type == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)
        self.processor = SDPAProcessor()

    def extra_repr(self) -> str:
        return f"type={self.attn_type}, heads={self.num_heads}, mode={self.attn_mode}, processor={self.processor!r}"

    # -------------------------------------------------------------------- projections
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def project_context(self, context: torch.Tensor):
        """A cross-attention context ``[..., T, C_ctx]`` → its keys and values ``[..., T, H, D]``
        (K is the first half of ``to_kv``; the keys RMS-normalised when ``qk_rms_norm``)."""
        if self.attn_type != "cross":
            raise ValueError("project_context is for cross-attention")
        k, v = self.to_kv(context).reshape(*context.shape[:-1], 2, self.num_heads, self.head_dim).unbind(dim=-3)
        return (self.k_rms_norm(k) if self.qk_rms_norm else k), v

    def _project(self, x: torch.Tensor, context: Optional[torch.Tensor]):
        """Rows ``[..., C]`` → ``q [..., H, D]`` and ``k, v`` (from ``x`` or ``context``)."""
        if self.attn_type == "cross":
            q = self._heads(self.to_q(x))
            k, v = self.project_context(context)
            return (self.q_rms_norm(q) if self.qk_rms_norm else q), k, v
        q, k, v = self.to_qkv(x).reshape(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(dim=-3)
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
            k = self.k_rms_norm(k)
        return q, k, v

    # -------------------------------------------------------------------- forward
    def forward(
        self, x: Union[torch.Tensor, SparseTensor], context: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, SparseTensor]:
        if self.attn_type == "cross" and context is None:
            raise ValueError("cross-attention needs a context")
        if isinstance(x, SparseTensor):
            out = self._forward_sparse(x, context)
            return x.replace(self.to_out(out.reshape(out.shape[0], self.channels)))
        if x.ndim != 3:
            raise ValueError(f"dense attention input must be [B, L, C], got {tuple(x.shape)}")
        q, k, v = self._project(x, context)
        out = self.processor(self, q, k, v, batch=range(x.shape[0]))
        return self.to_out(out.reshape(*x.shape[:2], self.channels))

    def _forward_sparse(self, x: SparseTensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        if self.attn_mode == "windowed":
            return self._forward_windowed(x)
        layout = x.layout
        lengths = [sl.stop - sl.start for sl in layout]
        if self.attn_type == "cross":
            if context.ndim != 3 or context.shape[0] != x.batch_size:
                raise ValueError(
                    f"cross-attention context must be [B={x.batch_size}, tokens, C], got {tuple(context.shape)}"
                )
        if len(set(lengths)) == 1:
            # Equal-length batch elements: one call on [B, L, ...] (no copies).
            rows = x.feats.reshape(x.batch_size, lengths[0], -1)
            q, k, v = self._project(rows, context)
            out = self.processor(self, q, k, v, batch=range(x.batch_size))
            return out.reshape(x.feats.shape[0], self.num_heads, self.head_dim)
        if type(self.processor) is SDPAProcessor:
            return self._forward_padded(x, context, layout)
        outs = []
        for b, sl in enumerate(layout):
            rows = x.feats[sl][None]
            ctx = context[b : b + 1] if context is not None else None
            q, k, v = self._project(rows, ctx)
            outs.append(self.processor(self, q, k, v, batch=range(b, b + 1))[0])
        return torch.cat(outs, dim=0)

    def _forward_padded(self, x: SparseTensor, context: Optional[torch.Tensor], layout) -> torch.Tensor:
        """Ragged batch under the fused default: pad every element to the longest, one masked call.

        Padded query rows are dropped afterwards; padded keys are masked out of self-attention.
        """
        order, slot, valid = x.cache("padding", lambda: _padding(layout, x.device))
        rows = x.feats.new_zeros(x.batch_size, valid.shape[1], x.feats.shape[1])
        rows[order, slot] = x.feats
        q, k, v = self._project(rows, context)
        mask = valid[:, None, None, :] if self.attn_type == "self" else None
        out = self.processor(self, q, k, v, batch=range(x.batch_size), mask=mask)
        return out.flatten(0, 1).index_select(0, order * out.shape[1] + slot)

    def _forward_windowed(self, x: SparseTensor) -> torch.Tensor:
        plan = x.cache(f"window_{self.window_size}_{self.shift_window}",
                       lambda: window_plan(x.coords, self.window_size, self.shift_window))
        q, k, v = self._project(x.feats, None)  # [N, H, D]

        def pad(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(plan.windows, plan.max_len, self.num_heads, self.head_dim)
            out[plan.window_id, plan.slot] = t.index_select(0, plan.order)
            return out

        out_w = self.processor(self, pad(q), pad(k), pad(v), batch=range(x.batch_size), mask=plan.mask)
        out = torch.empty_like(q)
        out[plan.order] = out_w.flatten(0, 1).index_select(0, plan.window_id * plan.max_len + plan.slot)
        return out


class WindowPlan(NamedTuple):
    """Everything windowed attention needs from the voxels, built once per structure (its host reads
    happen here, so the forward itself makes none): the sort ``order``, each sorted voxel's
    ``window_id`` and ``slot`` in it, the window count and longest window, and the key mask
    ``[W, 1, 1, max_len]`` (``None`` when every window is full)."""

    order: torch.Tensor
    window_id: torch.Tensor
    slot: torch.Tensor
    windows: int
    max_len: int
    mask: Optional[torch.Tensor]


def window_plan(coords: torch.Tensor, window_size: int, shift: int) -> WindowPlan:
    order, window_id = window_partition(coords, window_size, shift)
    windows = int(window_id[-1].item()) + 1 if window_id.numel() else 0
    counts = torch.bincount(window_id, minlength=windows)
    max_len = int(counts.max().item()) if windows else 0
    slot = torch.arange(order.shape[0], device=order.device) - (torch.cumsum(counts, 0) - counts)[window_id]
    valid = torch.zeros(windows, max_len, dtype=torch.bool, device=coords.device)
    valid[window_id, slot] = True
    mask = None if bool(valid.all()) else valid[:, None, None, :]
    return WindowPlan(order, window_id, slot, windows, max_len, mask)


def _padding(layout, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(element, slot)`` of every row in a padded ``[B, max_len]`` layout, and its valid mask."""
    lengths = torch.tensor([sl.stop - sl.start for sl in layout], device=device)
    element = torch.repeat_interleave(torch.arange(len(layout), device=device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    slot = torch.arange(int(lengths.sum()), device=device) - starts[element]
    valid = torch.arange(int(lengths.max()), device=device)[None, :] < lengths[:, None]
    return element, slot, valid


def iter_attention(root: nn.Module, prefix: str = "") -> Iterator[Tuple[str, MultiHeadAttention]]:
    for name, module in root.named_modules(prefix=prefix):
        if isinstance(module, MultiHeadAttention):
            yield name, module


def attn_processors(root: nn.Module) -> Dict[str, object]:
    """``{module path: processor}`` for every attention module below ``root``."""
    return {name: m.processor for name, m in iter_attention(root)}


def set_attn_processor(root: nn.Module, processor) -> None:
    """Install processors below ``root``.

    ``processor`` is one processor for every attention module, or a ``{module path: processor}``
    dict; a path that names no attention module is an error (never a silent no-op).
    """
    modules = dict(iter_attention(root))
    if isinstance(processor, dict):
        unknown = [p for p in processor if p not in modules]
        if unknown:
            raise KeyError(f"no attention module at {unknown[:3]}; known paths look like {next(iter(modules), '-')}")
        for path, proc in processor.items():
            modules[path].processor = proc
    else:
        for m in modules.values():
            m.processor = processor


@contextlib.contextmanager
def use_attn_processors(root: nn.Module, processors: Dict[str, object]):
    """Install ``{module path: processor}`` below ``root`` for the duration of a ``with`` block.

    The previous processors come back when the block ends, whatever happens inside it.
    """
    previous = attn_processors(root)
    set_attn_processor(root, processors)
    try:
        yield root
    finally:
        set_attn_processor(root, {path: previous[path] for path in processors})

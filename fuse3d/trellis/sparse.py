"""Sparse voxel tensors and the sparse layers TRELLIS builds on, in plain PyTorch.

A :class:`SparseTensor` holds ``coords [N, 4]`` (int32: batch, x, y, z) and ``feats [N, ...]``.
Rows of one batch element are contiguous and batch elements appear in increasing order; within a
batch element rows keep whatever order the producer gave them (sorted ``(x, y, z)`` for a sampled
structure, child-major order after :class:`SparseSubdivide`).

Layers that change the voxel set (:class:`SparseDownsample`, :class:`SparseSubdivide`) record what
they need to undo themselves in a per-tensor ``spatial_cache`` that travels with derived tensors,
the way the published implementation does, so that :class:`SparseUpsample` can return to the
finer voxels and neighbour maps of the submanifold convolution are computed once per voxel set.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "SparseTensor",
    "SparseLinear",
    "SparseConv3d",
    "dense_convolutions",
    "SparseDownsample",
    "SparseUpsample",
    "SparseSubdivide",
    "SparseGroupNorm32",
    "SparseSiLU",
    "sparse_cat",
]

Number = Union[int, float]

#: Largest gathered neighbourhood block a sparse convolution materialises at once (bytes).
GATHER_BYTES = 512 << 20
#: The same on the CPU, where a block that stays in cache is about 2× faster (batch-3 captures).
CPU_GATHER_BYTES = 4 << 20


class SparseTensor:
    """Features on active voxels.

    Args:
        feats: ``[N, ...]`` features, one row per active voxel.
        coords: ``[N, 4]`` integer coordinates ``(batch, x, y, z)``; stored as int32.
        batch_size: number of batch elements; inferred from ``coords`` when omitted.

    Batch-broadcast arithmetic follows the published implementation: a dense tensor operand that
    broadcasts to ``[B, C]`` holds per-batch values, so ``x * t`` with ``t [B, C]`` multiplies every row
    of batch element ``b`` by ``t[b]``; any other tensor applies row by row; scalars apply to every
    row. Code in this package spells row-wise operations out with :meth:`replace`.
    """

    __slots__ = ("feats", "coords", "batch_size", "_cache", "_layout")

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        batch_size: Optional[int] = None,
        *,
        spatial_cache: Optional[dict] = None,
    ):
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"SparseTensor coords must be [N, 4] (batch, x, y, z), got {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(
                f"SparseTensor feats and coords disagree on the number of voxels: "
                f"feats {tuple(feats.shape)}, coords {tuple(coords.shape)}"
            )
        if coords.dtype != torch.int32:
            coords = coords.to(torch.int32)
        self.feats = feats
        self.coords = coords
        if batch_size is None:
            batch_size = int(coords[:, 0].max().item()) + 1 if coords.shape[0] > 0 else 1
        self.batch_size = batch_size
        self._cache = spatial_cache if spatial_cache is not None else {}
        self._layout = None

    # ------------------------------------------------------------------ structure
    @property
    def shape(self) -> torch.Size:
        """``[batch_size, *feats.shape[1:]]``, as in the published implementation."""
        return torch.Size([self.batch_size, *self.feats.shape[1:]])

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def layout(self) -> List[slice]:
        """Row range of each batch element (rows of one element are contiguous)."""
        if self._layout is None:
            def make():
                counts = torch.bincount(self.coords[:, 0].long(), minlength=self.batch_size).tolist()
                starts = [0]
                for c in counts[:-1]:
                    starts.append(starts[-1] + c)
                return [slice(s, s + c) for s, c in zip(starts, counts)]

            self._layout = self.cache("layout", make)
        return self._layout

    @property
    def batch_index(self) -> torch.Tensor:
        """``[N]`` long tensor: the batch element of every row."""
        return self.cache("batch_index", lambda: self.coords[:, 0].long())

    @property
    def uniform_length(self) -> Optional[int]:
        """Rows per batch element when every element has the same number, else ``None``.

        Then ``feats.view(batch_size, L, ...)`` is a free dense view of the batch.
        """
        lengths = {sl.stop - sl.start for sl in self.layout}
        return lengths.pop() if len(lengths) == 1 else None

    def cache(self, key: str, make: Callable[[], object]):
        """Return the spatial-cache entry ``key``, computing it with ``make()`` the first time."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def replace(self, feats: torch.Tensor, coords: Optional[torch.Tensor] = None) -> "SparseTensor":
        """A tensor with new features on the same voxels (sharing the spatial cache)."""
        if coords is None:
            out = SparseTensor(feats, self.coords, self.batch_size, spatial_cache=self._cache)
            out._layout = self._layout
            return out
        return SparseTensor(feats, coords, self.batch_size)

    def to(self, *args, **kwargs) -> "SparseTensor":
        feats = self.feats.to(*args, **kwargs)
        coords = self.coords.to(feats.device)
        if coords is self.coords:
            return self.replace(feats)
        return SparseTensor(feats, coords, self.batch_size)

    def type(self, dtype: torch.dtype) -> "SparseTensor":
        return self.replace(self.feats.type(dtype))

    def float(self) -> "SparseTensor":
        return self.type(torch.float32)

    def half(self) -> "SparseTensor":
        return self.type(torch.float16)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def detach(self) -> "SparseTensor":
        return self.replace(self.feats.detach())

    def clone(self) -> "SparseTensor":
        return SparseTensor(self.feats.clone(), self.coords.clone(), self.batch_size)

    def reshape(self, *shape: int) -> "SparseTensor":
        """Reshape the per-voxel feature dims: ``x.reshape(H, -1)`` makes feats ``[N, H, C/H]``."""
        return self.replace(self.feats.reshape(self.feats.shape[0], *shape))

    def __len__(self) -> int:
        return self.feats.shape[0]

    def __repr__(self) -> str:
        return (
            f"SparseTensor(voxels={self.feats.shape[0]}, batch_size={self.batch_size}, "
            f"feats={list(self.feats.shape[1:])}, dtype={self.dtype}, device={self.device})"
        )

    def __getitem__(self, b: int) -> "SparseTensor":
        """Batch element ``b`` alone, as a batch of one."""
        sl = self.layout[b]
        coords = self.coords[sl].clone()
        coords[:, 0] = 0
        return SparseTensor(self.feats[sl], coords, 1)

    def dense(self, resolution: int) -> torch.Tensor:
        """``[B, C, R, R, R]`` dense grid (zeros where inactive); feats must be ``[N, C]``."""
        out = self.feats.new_zeros(self.batch_size, self.feats.shape[1], resolution, resolution, resolution)
        c = self.coords.long()
        out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = self.feats
        return out

    # ------------------------------------------------------------------ arithmetic
    def _broadcast(self, other) -> Union[torch.Tensor, Number]:
        if isinstance(other, SparseTensor):
            if other.feats.shape[0] != self.feats.shape[0]:
                raise ValueError("SparseTensor arithmetic needs both operands on the same voxels")
            return other.feats
        if isinstance(other, torch.Tensor) and other.ndim > 0:
            # A dense operand holds per-batch values ([B, C] or broadcastable to it) ...
            try:
                return torch.broadcast_to(other, self.shape).index_select(0, self.batch_index)
            except RuntimeError:
                pass  # ... or one row per voxel ([N, C]).
        return other

    def _op(self, other, op) -> "SparseTensor":
        return self.replace(op(self.feats, self._broadcast(other)))

    def __add__(self, other):
        return self._op(other, torch.add)

    __radd__ = __add__

    def __sub__(self, other):
        return self._op(other, torch.sub)

    def __rsub__(self, other):
        return self._op(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._op(other, torch.mul)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._op(other, torch.div)

    def __neg__(self):
        return self.replace(-self.feats)


def sparse_cat(tensors: Sequence[SparseTensor]) -> SparseTensor:
    """Stack several sparse tensors as consecutive batch elements."""
    feats, coords, offset = [], [], 0
    for t in tensors:
        c = t.coords.clone()
        c[:, 0] += offset
        offset += t.batch_size
        coords.append(c)
        feats.append(t.feats)
    return SparseTensor(torch.cat(feats), torch.cat(coords), offset)


# ---------------------------------------------------------------------- voxel hashing
def _voxel_keys(coords: torch.Tensor, extent: int) -> torch.Tensor:
    """Unique int64 key of each ``(batch, x, y, z)`` with coordinates in ``[-1, extent]``."""
    c = coords.long() + 1
    span = extent + 2
    return ((c[:, 0] * span + c[:, 1]) * span + c[:, 2]) * span + c[:, 3]


def neighbour_map(coords: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """``[N, K³]`` index of each voxel's neighbour at every kernel offset (``-1`` if inactive).

    Offsets run ``(dx, dy, dz)`` in C order over ``-r..r`` (``r = kernel_size // 2``): the order of
    the weight layout ``[out, kx, ky, kz, in]``.
    """
    r = kernel_size // 2
    n = coords.shape[0]
    device = coords.device
    if n == 0:
        return torch.empty(0, kernel_size**3, dtype=torch.long, device=device)
    extent = int(coords[:, 1:].max().item()) + r + 1
    keys = _voxel_keys(coords, extent)
    sorted_keys, order = torch.sort(keys)
    rng = torch.arange(-r, r + 1, device=device)
    offsets = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), dim=-1).reshape(-1, 3)
    shifted = coords.long()[:, None, :].repeat(1, offsets.shape[0], 1)
    shifted[..., 1:] += offsets[None]
    q = _voxel_keys(shifted.reshape(-1, 4), extent)
    pos = torch.searchsorted(sorted_keys, q).clamp_(max=n - 1)
    found = sorted_keys[pos] == q
    idx = torch.where(found, order[pos], torch.full_like(pos, -1))
    return idx.reshape(n, offsets.shape[0])


class SparseLinear(nn.Linear):
    """``nn.Linear`` applied to the features of a :class:`SparseTensor`."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class _ConvParams(nn.Module):
    """Holds ``weight [out, k, k, k, in]`` and ``bias [out]`` under the checkpoint's ``.conv`` prefix."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = in_channels * kernel_size**3
        nn.init.uniform_(self.weight, -(1 / fan_in) ** 0.5, (1 / fan_in) ** 0.5)


class SparseConv3d(nn.Module):
    """Submanifold 3D convolution: outputs exist exactly at the input voxels.

    ``out[p] = bias + Σ_d W[:, d + r, :] · in[p + d]`` over the ``kernel_size³`` offsets ``d`` whose
    voxel ``p + d`` is active (a cross-correlation). Weights are stored ``[out, kx, ky, kz, in]`` under
    ``<name>.conv.weight``, the layout of the published checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"SparseConv3d supports odd kernel sizes only, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.conv = _ConvParams(in_channels, out_channels, kernel_size, bias)
        self.dense = False  # see dense_convolutions()

    def forward(self, x: SparseTensor) -> SparseTensor:
        w = self.conv.weight
        feats = x.feats
        if self.kernel_size == 1:
            out = F.linear(feats, w.reshape(self.out_channels, self.in_channels), self.conv.bias)
            return x.replace(out)
        if self.dense:
            return self._dense_forward(x)
        k3 = self.kernel_size**3
        if torch.is_autocast_enabled(feats.device.type):  # the custom backward wants one dtype throughout
            with torch.autocast(feats.device.type, enabled=False):
                return self.forward(x.replace(feats.float()))
        nbr = x.cache(f"neighbours_{self.kernel_size}", lambda: neighbour_map(x.coords, self.kernel_size))
        gather = x.cache(f"gather_{self.kernel_size}", lambda: torch.where(nbr < 0, nbr.shape[0], nbr))
        weight = w.reshape(self.out_channels, k3 * self.in_channels)
        return x.replace(_SubmanifoldConv.apply(feats, weight.to(feats.dtype),
                                                None if self.conv.bias is None else self.conv.bias.to(feats.dtype), gather))


    def _dense_forward(self, x: SparseTensor) -> SparseTensor:
        """The same submanifold convolution through a dense grid: scatter the active voxels into
        zeros, ``F.conv3d``, read the active voxels back. Exact (inactive voxels are zeros either
        way); faster to train where the grid is small and the batch large, at the grid's memory."""
        r, feats = self.kernel_size // 2, x.feats
        extent = x.cache("dense_extent", lambda: int(x.coords[:, 1:].max().item()) + 1)
        flat = x.cache("dense_index", lambda: ((x.coords[:, 0].long() * extent + x.coords[:, 1].long()) * extent
                                                + x.coords[:, 2].long()) * extent + x.coords[:, 3].long())
        b, c = x.batch_size, feats.shape[1]
        grid = feats.new_zeros(b * extent ** 3, c).index_copy(0, flat, feats)
        grid = grid.view(b, extent, extent, extent, c).permute(0, 4, 1, 2, 3)
        weight = self.conv.weight.permute(0, 4, 1, 2, 3).to(grid.dtype)      # [out, in, kx, ky, kz]
        bias = None if self.conv.bias is None else self.conv.bias.to(grid.dtype)
        out = F.conv3d(grid, weight, bias, padding=r)
        return x.replace(out.permute(0, 2, 3, 4, 1).reshape(-1, self.out_channels).index_select(0, flat))


class dense_convolutions:
    """``with dense_convolutions(model):`` runs every 3×3×3 :class:`SparseConv3d` of ``model`` through
    a dense grid (:meth:`SparseConv3d._dense_forward`), a training-only path; restored on exit."""

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.convs = [m for m in model.modules() if isinstance(m, SparseConv3d)]
        self.enabled = enabled

    def __enter__(self):
        self.before = [m.dense for m in self.convs]
        for m in self.convs:
            m.dense = self.enabled
        return self

    def __exit__(self, *exc):
        for m, v in zip(self.convs, self.before):
            m.dense = v


def _gather_matmul(feats: torch.Tensor, gather: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``out[p] = bias + weight · concat_k feats[gather[p, k]]`` (row ``N`` of ``gather`` = a zero row).

    Rows are processed in chunks so the gathered ``[rows, k·C]`` block stays under ``GATHER_BYTES``
    (``CPU_GATHER_BYTES`` on the CPU).
    """
    n, c = feats.shape
    padded = torch.cat([feats, feats.new_zeros(1, c)], dim=0)
    rows = _chunk_rows(feats, gather.shape[1])
    if n <= rows:
        return F.linear(_gather_rows(padded, gather), weight, bias)
    out = feats.new_empty(n, weight.shape[0])
    for start in range(0, n, rows):
        sl = slice(start, start + rows)
        out[sl] = F.linear(_gather_rows(padded, gather[sl]), weight, bias)
    return out


def _chunk_rows(feats: torch.Tensor, k: int) -> int:
    """Rows per chunk of a gathered ``[rows, k·C]`` block within the device's byte budget."""
    budget = GATHER_BYTES if feats.device.type != "cpu" else min(GATHER_BYTES, CPU_GATHER_BYTES)
    return max(1, budget // (k * feats.shape[1] * feats.element_size()))


def _gather_rows(rows: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """``concat_k rows[gather[p, k]]`` as ``[P, k·C]``: one ``index_select`` of whole rows (on the CPU
    about 4× faster than the advanced index ``rows[gather]``, with the same values)."""
    return rows.index_select(0, gather.reshape(-1)).view(gather.shape[0], -1)


class _SubmanifoldConv(torch.autograd.Function):
    """Gather-matmul convolution whose backward pass is itself a gather (no scatter/atomics).

    With ``k̄`` the opposite offset of ``k``, ``∂L/∂in[q] = Σ_k W_kᵀ ∂L/∂out[nbr[q, k̄]]`` — a submanifold
    convolution of the output gradient with the flipped, transposed kernel — and
    ``∂L/∂W = ∂L/∂outᵀ · cols`` with the gathered inputs recomputed chunk by chunk.
    """

    @staticmethod
    def forward(ctx, feats, weight, bias, gather):
        ctx.save_for_backward(feats, weight, gather)
        ctx.has_bias = bias is not None
        return _gather_matmul(feats, gather, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight, gather = ctx.saved_tensors
        k3, c_in, c_out = gather.shape[1], feats.shape[1], weight.shape[0]
        grad_feats = grad_weight = grad_bias = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            flipped = weight.view(c_out, k3, c_in).flip(1).permute(2, 1, 0).reshape(c_in, k3 * c_out)
            grad_feats = _gather_matmul(grad_out, gather, flipped)
        if ctx.needs_input_grad[1]:
            padded = torch.cat([feats, feats.new_zeros(1, c_in)], dim=0)
            rows = _chunk_rows(feats, k3)
            grad_weight = torch.zeros_like(weight)
            for start in range(0, feats.shape[0], rows):
                sl = slice(start, start + rows)
                grad_weight += grad_out[sl].t() @ _gather_rows(padded, gather[sl])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_feats, grad_weight, grad_bias, None


class SparseDownsample(nn.Module):
    """Pool the features of each ``factor³`` block of voxels into one coarser cell.

    Cells come out sorted by ``(batch, x, y, z)``; a voxel's cell is ``coord // factor``.

    The published implementation pools with ``scatter_reduce(zeros, ..., reduce="mean")``, whose
    default ``include_self=True`` counts the zero it starts from: a cell holding ``n`` voxels gets
    ``sum / (n + 1)``, not the plain mean. The released checkpoints were trained with that, so it is
    reproduced here (the reference fixtures differ by 4e-2 otherwise).
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        cell_coords, inverse, divisor, cache = x.cache(f"downsample_{self.factor}", lambda: self._cells(x))
        sums = x.feats.new_zeros(cell_coords.shape[0], *x.feats.shape[1:])
        sums.index_add_(0, inverse, x.feats)
        feats = sums / divisor.to(x.feats.dtype).view(-1, *([1] * (x.feats.ndim - 1)))
        return SparseTensor(feats, cell_coords, x.batch_size, spatial_cache=cache)

    def _cells(self, x: SparseTensor):
        """The coarse cells of ``x``'s voxels, built once per structure: their coordinates, each voxel's
        cell, the divisor ``n + 1`` and the coarse tensors' spatial cache, which every forward on the
        same voxels shares (so the coarse neighbour maps and windows are built once too) and which
        remembers how to return to the fine voxels."""
        f = self.factor
        coarse = x.coords.long().clone()
        coarse[:, 1:] //= f
        extent = int(coarse[:, 1:].max().item()) + 1 if coarse.shape[0] else 1
        uniq, inverse = torch.unique(_voxel_keys(coarse, extent), sorted=True, return_inverse=True)
        divisor = torch.bincount(inverse, minlength=uniq.shape[0]) + 1
        cell_coords = torch.empty(uniq.shape[0], 4, dtype=torch.int32, device=x.device)
        cell_coords[inverse] = coarse.to(torch.int32)
        return cell_coords, inverse, divisor, {f"upsample_{f}": (x.coords, inverse, x._cache)}


class SparseUpsample(nn.Module):
    """Nearest-neighbour upsampling back to the voxels a :class:`SparseDownsample` started from."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        entry = x._cache.get(f"upsample_{self.factor}")
        if entry is None:
            raise ValueError("SparseUpsample needs a tensor produced by a matching SparseDownsample")
        fine_coords, inverse, fine_cache = entry
        return SparseTensor(x.feats.index_select(0, inverse), fine_coords, x.batch_size, spatial_cache=fine_cache)


class SparseSubdivide(nn.Module):
    """Split every voxel into its 8 children at twice the resolution (features copied).

    Row ``8·i + c`` is child ``c`` of voxel ``i``, children ordered ``(dx, dy, dz)`` in C order.
    """

    def forward(self, x: SparseTensor) -> SparseTensor:
        children = torch.stack(
            torch.meshgrid(*[torch.arange(2, device=x.device)] * 3, indexing="ij"), dim=-1
        ).reshape(8, 3).to(torch.int32)
        coords = x.coords.clone()
        coords[:, 1:] *= 2
        coords = coords[:, None, :].repeat(1, 8, 1)
        coords[..., 1:] += children[None]
        feats = x.feats[:, None].expand(x.feats.shape[0], 8, *x.feats.shape[1:])
        return SparseTensor(feats.reshape(-1, *x.feats.shape[1:]), coords.reshape(-1, 4), x.batch_size)


class SparseGroupNorm32(nn.GroupNorm):
    """GroupNorm over the voxels of each batch element separately, computed in float32."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        feats = x.feats.float()
        out = torch.empty_like(feats)
        for sl in x.layout:
            chunk = feats[sl].t().unsqueeze(0)  # [1, C, n]
            out[sl] = super().forward(chunk).squeeze(0).t()
        return x.replace(out.type(x.dtype))


class SparseSiLU(nn.SiLU):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))

"""Local attention enhancement (paper §3.4) — λ per region and multiplicative logit factors.

The enhancement matrix ``E`` multiplies the *scaled* cross-attention logits before the softmax, in
the conditional pass only. It is never stored densely: a region table says which cells belong to
which region (a cell may belong to several locals' aligned sets), which region each unified token
comes from, and λ per region::

    E[i, j] = λ[r(j)]  if cell i ∈ region r(j)  else 1

Regions ``0..K-1`` are the local images (their aligned cells ``V_k`` × their tokens, CLS and
registers included); region ``K`` is the global image (the unaligned cells × the tokens ``D_g``).

λ modes (``strength`` = s ≥ 0):

* ``"share"`` (default, the paper's description: λ from the selected share of the whole image):
  ``λ_k = 1 + s·(1 − p_k)``, ``p_k`` = selected patches / all patches of image k. Smaller, more
  precise regions get a stronger, more localised influence; λ stays within ``[1, 1 + s]``.
* ``"adaptive"`` (the published code's adaptive mode): ``λ_k = (1/p_k − 1)·s + 1`` with ``p_k`` the
  selected share of image k's *foreground* patches.
* ``"constant"`` (the published code's default): ``λ_k = s + 1``.

The global region gets ``1 + s·(1 − p_g)`` in ``"share"`` mode (``p_g = |D_g|`` / all patches) and
``s + 1`` otherwise, as in the published code. Explicit λ values can be given instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch

LAMBDA_MODES = ("share", "adaptive", "constant")


def check_lambda(value: float, what: str = "λ") -> float:
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return v


def region_lambdas(strength: float, mode: str, selected: Sequence[int], foreground: Sequence[int],
                   total: int) -> List[float]:
    """λ for each local image from its selected and foreground patch counts (see the module docstring)."""
    s = check_lambda(strength, "strength")
    if mode not in LAMBDA_MODES:
        raise ValueError(f"lambda_mode must be one of {LAMBDA_MODES}, got {mode!r}")
    out = []
    for n_sel, n_fg in zip(selected, foreground):
        if n_sel <= 0:
            raise ValueError("a region with no selected patch has no λ")
        if mode == "share":
            lam = 1 + s * (1 - n_sel / total)
        elif mode == "adaptive":
            lam = (n_fg / n_sel - 1) * s + 1
        else:
            lam = s + 1
        out.append(check_lambda(lam))
    return out


def global_lambda(strength: float, mode: str, selected: int, total: int) -> float:
    s = check_lambda(strength, "strength")
    if mode == "share":
        return check_lambda(1 + s * (1 - selected / total))
    return check_lambda(s + 1)


@dataclass
class EnhancementTables:
    """Region tables defining ``E`` without storing it.

    Attributes:
        cell_regions: ``[cells, R]`` bool: cell i belongs to region r.
        token_region: ``[tokens]`` long: region of each unified token.
        lambdas: ``[R]`` float: λ of each region.
    """

    cell_regions: torch.Tensor
    token_region: torch.Tensor
    lambdas: torch.Tensor

    def to(self, device) -> "EnhancementTables":
        return EnhancementTables(self.cell_regions.to(device), self.token_region.to(device), self.lambdas.to(device))

    def factors(self, cells: slice = slice(None)) -> torch.Tensor:
        """``E`` for a range of cells: ``[cells, tokens]`` float (computed on the fly)."""
        inside = self.cell_regions[cells][:, self.token_region]
        lam = self.lambdas[self.token_region].to(torch.float32)
        return torch.where(inside, lam[None, :], torch.ones((), device=lam.device))

    def dense(self) -> torch.Tensor:
        """The whole ``[cells, tokens]`` matrix — for references and views, never for the hot path."""
        return self.factors()


def enhancement_tables(aligned: Sequence[torch.Tensor], unaligned: torch.Tensor, token_region: torch.Tensor,
                       lambdas: Sequence[float]) -> EnhancementTables:
    """Build the tables from the aligned cell sets ``V_k``, the unaligned set and λ per region."""
    if len(lambdas) != len(aligned) + 1:
        raise ValueError(f"need {len(aligned) + 1} λ values (one per local image and the global one), got {len(lambdas)}")
    cell_regions = torch.stack([m.bool().cpu() for m in aligned] + [unaligned.bool().cpu()], dim=1)
    lam = torch.tensor([check_lambda(v) for v in lambdas], dtype=torch.float32)
    return EnhancementTables(cell_regions, token_region.long().cpu(), lam)


def identity_tables(num_cells: int, token_region: torch.Tensor) -> EnhancementTables:
    """Tables whose ``E`` is all ones (enhancement off)."""
    r = int(token_region.max().item()) + 1
    return EnhancementTables(torch.zeros(num_cells, r, dtype=torch.bool), token_region.long().cpu(), torch.ones(r))


def enhanced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, tables: EnhancementTables,
                       chunk: int = 2048) -> torch.Tensor:
    """Exact explicit attention with enhanced logits: ``softmax(E ⊙ (q·kᵀ·scale))·v``.

    ``q [b, cells, H, D]``, ``k, v [b, tokens, H, D]`` → ``[b, cells, H, D]``; computed in float32
    over chunks of cells so no ``[cells, tokens]`` matrix outlives a chunk.
    """
    out = torch.empty_like(q)
    kf, vf = k.float(), v.float()
    for start in range(0, q.shape[1], chunk):
        sl = slice(start, start + chunk)
        logits = torch.einsum("bqhd,bkhd->bhqk", q[:, sl].float(), kf) * scale
        logits = logits * tables.factors(sl)[None, None]
        out[:, sl] = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), vf).to(q.dtype)
    return out


def flex_score_mod(tables: EnhancementTables) -> Callable:
    """A FlexAttention ``score_mod`` applying ``E`` (``score`` is already ``q·kᵀ·scale``)."""
    cell_regions, token_region, lambdas = tables.cell_regions, tables.token_region, tables.lambdas

    def score_mod(score, b, h, q_idx, kv_idx):
        r = token_region[kv_idx]
        return torch.where(cell_regions[q_idx, r], score * lambdas[r], score)

    return score_mod


def region_split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                           tables: EnhancementTables, lse_attention=None, plan=None) -> torch.Tensor:
    """Exact enhanced attention from one fused attention call per token region.

    Within region ``r``'s tokens, ``E[i, j] = f_r[i]`` depends on the cell only (λ_r if cell i is in
    region r, else 1), so ``E ⊙ (q_i·k_j·s) = (f_r[i]·q_i)·k_j·s``: attend with rescaled queries to
    each region's keys, then merge the partial softmaxes by their log-sum-exps::

        out = Σ_r exp(lse_r − logsumexp_r lse_r) · out_r

    ``q [b, cells, H, D]``, ``k, v [b, tokens, H, D]``. ``lse_attention(q [H, L, D], k, scale, v)``
    returns ``(lse [H, L], out [H, L, D])``; the default is
    :func:`fuse3d.method.processors.attention_logsumexp` (a fused kernel on CUDA).
    """
    if lse_attention is None:
        from .processors import attention_logsumexp as lse_attention
    plan = plan or region_plan(tables, q.device, q.dtype)
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        qh, kh, vh = q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1)  # [H, L, D]
        lses, outs = [], []
        for cols, factor in plan:
            lse_r, out_r = lse_attention(qh * factor, kh[:, cols], scale, vh[:, cols])
            lses.append(lse_r)
            outs.append(out_r.float())
        lse = torch.stack(lses)  # [R, H, cells]
        weights = torch.softmax(lse, dim=0)  # exp(lse_r − logsumexp_r lse_r)
        merged = (weights[..., None] * torch.stack(outs)).sum(0)  # [H, cells, D]
        out[b] = merged.transpose(0, 1).to(q.dtype)
    return out


def region_plan(tables: EnhancementTables, device, dtype) -> list:
    """Per token region: its token columns (a slice when contiguous) and the per-cell query factor
    ``[1, cells, 1]``. Computed once per sampling; reading the tables' sizes here is the only sync."""
    region = tables.token_region.cpu()
    plan = []
    for r in range(tables.cell_regions.shape[1]):
        cols = (region == r).nonzero().squeeze(1)
        if len(cols) == 0:
            continue
        contiguous = bool((cols[1:] - cols[:-1] == 1).all())
        index = slice(int(cols[0]), int(cols[-1]) + 1) if contiguous else cols.to(device)
        factor = torch.where(tables.cell_regions[:, r].to(device), tables.lambdas[r].to(device), 1.0)
        plan.append((index, factor.to(dtype)[None, :, None]))
    return plan

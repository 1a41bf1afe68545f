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
from typing import List, Optional, Sequence

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


def run_lambdas(strength: float, mode: str, selected: Sequence[int], foreground: Sequence[int], total: int, *,
                explicit: Optional[Sequence[float]] = None, explicit_global: Optional[float] = None,
                global_selected: int = 0, with_global: bool = True, reverse_alignment: bool = True) -> List[float]:
    """λ of every region of a run: the local images' (``explicit``, else :func:`region_lambdas`),
    then — unless ``with_global`` is off (inpainting) — the global image's (``explicit_global``, else
    :func:`global_lambda` of its ``global_selected`` = ``|D_g|`` patches; 1 without the reverse
    alignment, whose ablation leaves the global image unenhanced)."""
    out = list(explicit) if explicit is not None else region_lambdas(strength, mode, selected, foreground, total)
    if with_global:
        if explicit_global is not None:
            out.append(explicit_global)
        else:
            out.append(global_lambda(strength, mode, max(global_selected, 1), total) if reverse_alignment else 1.0)
    return out

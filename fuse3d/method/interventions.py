"""Causal interventions in the latent flow's cross-attention: ablate heads, patch tokens.

Attention maps say where a head looks; an intervention says what it does. Two kinds, each an
attention processor like the capturing and enhancing ones, wrapped around whichever processor the
block already runs (the enhancement's, or fused attention):

- **head ablation**: the chosen heads' outputs (before ``to_out``) are set to zero, or to their mean
  over the cells of the call (``mode="mean"``), in both CFG passes — the network runs without them;
- **token patching**: the keys and values of one region of the unified tokens (a local image's
  selected tokens, CLS and registers included) are replaced by another condition's tokens at the same
  patches, in the conditional pass — "what if this region showed that image instead".

Both act in chosen blocks and sampler steps. :func:`patched_context` builds the replacement rows
once per sampling; a processor only projects them (once per block) and swaps them in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

ABLATION_MODES = ("zero", "mean")


@dataclass(frozen=True)
class TokenPatch:
    """Rows ``rows`` of the unified tokens are replaced by ``tokens [len(rows), C]``."""

    rows: torch.Tensor
    tokens: torch.Tensor


def patched_context(token_region: torch.Tensor, token_patch: torch.Tensor, region: int, source: torch.Tensor,
                    prefix: int) -> TokenPatch:
    """The replacement for ``region``'s rows of the unified tokens: the ``source`` condition's tokens
    ``[T, C]`` at the same patches (``token_patch``), its CLS and registers for the region's own.

    Args:
        token_region, token_patch: ``[T_u]`` the unified tokens' region and patch (``-1``: CLS/REG).
        region: which region to patch (``k`` for local ``k``, ``K`` for the global image).
        source: the tokens of the condition whose content is patched in (``[1374, C]``).
    """
    rows = torch.nonzero(token_region == region).squeeze(1)
    if len(rows) == 0:
        raise ValueError(f"the unified tokens have no region {region}")
    patch = token_patch[rows]
    prefix_rank = torch.cumsum((patch < 0).long(), 0) - 1  # CLS → 0, REG_1 → 1, …
    index = torch.where(patch >= 0, patch + prefix, prefix_rank.clamp(max=prefix - 1))
    return TokenPatch(rows, source[index])


class InterveningProcessor:
    """Runs ``inner`` (the block's processor) with token patching before and head ablation after.

    Args:
        inner: the processor to wrap (``EnhanceProcessor``, ``SDPAProcessor``, …).
        tracker: the sampling's :class:`~fuse3d.trellis.sampler.CallTracker`.
        heads: 0-based heads to ablate in this block (may be empty).
        mode: ``"zero"`` or ``"mean"`` (the head's output averaged over the call's cells).
        patch: a :class:`TokenPatch` applied in this block's conditional pass (or ``None``).
        steps: sampler steps at which to intervene (``None``: all).
    """

    def __init__(self, inner, tracker, heads: Sequence[int] = (), mode: str = "zero",
                 patch: Optional[TokenPatch] = None, steps: Optional[Sequence[int]] = None):
        if mode not in ABLATION_MODES:
            raise ValueError(f"ablation mode must be one of {ABLATION_MODES}, got {mode!r}")
        self.inner, self.tracker, self.mode, self.patch = inner, tracker, mode, patch
        self.heads = [int(h) for h in heads]
        self.steps = None if steps is None else {int(s) for s in steps}
        self._patched = None  # (keys, values) of the patch in this block: the same at every step

    def _now(self) -> bool:
        return self.steps is None or self.tracker.step in self.steps

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        now = self._now()
        if now and self.patch is not None and self.tracker.branch == "cond":
            if self._patched is None:
                self._patched = attn.project_context(self.patch.tokens.to(device=q.device, dtype=q.dtype)[None])
            rows = self.patch.rows.to(q.device)
            k, v = k.clone(), v.clone()
            k[:, rows], v[:, rows] = self._patched[0], self._patched[1]
        out = self.inner(attn, q, k, v, batch=batch, mask=mask)
        if now and self.heads:
            out = out.clone()
            if self.mode == "zero":
                out[:, :, self.heads] = 0
            else:
                out[:, :, self.heads] = out[:, :, self.heads].mean(dim=1, keepdim=True)
        return out

    def __repr__(self) -> str:
        return f"InterveningProcessor(heads={self.heads}, mode={self.mode!r}, patch={self.patch is not None})"


def block_plan(num_blocks: int, ablate_heads: Optional[Sequence[Tuple[int, Sequence[int]]]],
               patch_blocks: Optional[Sequence[int]], patching: bool) -> Dict[int, Tuple[Tuple[int, ...], bool]]:
    """Per touched block: the heads it ablates and whether it patches tokens."""
    heads = {int(b): tuple(int(h) for h in hs) for b, hs in (ablate_heads or ())}
    bad = [b for b in heads if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"ablate_heads names blocks {bad}; the latent flow has blocks 0..{num_blocks - 1}")
    patched = set(range(num_blocks)) if patching and patch_blocks is None else {int(b) for b in (patch_blocks or ())}
    return {b: (heads.get(b, ()), b in patched) for b in sorted(set(heads) | patched)}

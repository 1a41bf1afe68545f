"""Attention processors for Fuse3D: capturing (DAAM-style running sums) and enhancing.

They plug into the cross-attention modules of the latent flow (``slat_flow.blocks.i.cross_attn``)
through :func:`fuse3d.trellis.attention.use_attn_processors`. A shared :class:`CallTracker` tells
them the sampler step and CFG branch of the current network call; they act on the conditional pass
only and compute the outputs with fused attention.

Capture never stores a ``[heads, cells, tokens]`` map per block and step: it adds, per batch
element, what alignment needs to running sums:

* a *forward* target (a local image) sums, over its selected tokens, the attention normalised over
  tokens → ``[heads, cells]``; optional per-block ``[blocks, heads, cells]`` and per-step
  ``[steps, heads, cells]`` sums for drill-down views;
* a *reverse* target (the global image) keeps the attention normalised over cells for its
  candidate tokens → ``[heads, cells, candidates]`` (one aggregated map, needed because the
  unaligned cells it is summed over change whenever thresholds are retuned).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ..trellis.attention import SDPAProcessor
from ..trellis.sampler import ModelCall
from .enhancement import EnhancementTables, enhanced_attention, flex_score_mod, region_plan, region_split_attention

ENHANCEMENT_BACKENDS = ("auto", "explicit", "flex", "regions")


class CallTracker:
    """Remembers the sampler step and branch of the network call in progress.

    Pass it as the sampler's ``call_context``; processors read ``step`` and ``branch``.
    """

    def __init__(self):
        self.step: int = -1
        self.branch: str = "cond"
        self.calls: List[ModelCall] = []

    @contextlib.contextmanager
    def __call__(self, call: ModelCall):
        self.step, self.branch = call.step, call.branch
        self.calls.append(call)
        try:
            yield
        finally:
            self.branch = "cond"


_FUSED = SDPAProcessor()


def sdpa(attn, q, k, v, key_mask: Optional[torch.Tensor] = None):
    """The default fused attention ``[b, L, H, D]``, with an optional key mask ``[b, T]`` (True = real token)."""
    return _FUSED(attn, q, k, v, batch=None, mask=None if key_mask is None else key_mask[:, None, None, :])


def attention_logsumexp(q: torch.Tensor, k: torch.Tensor, scale: float, v: Optional[torch.Tensor] = None):
    """``logsumexp`` over keys of the scaled logits, without materialising them where possible.

    ``q [H, L, D]``, ``k [H, T, D]`` → ``lse [H, L]`` (float32), plus the attention output ``[H, L, Dv]``
    when ``v`` is given. This uses a fused attention kernel that returns the log-sum-exp it computes
    anyway: memory-efficient attention on CUDA, flash attention on the CPU (4.6× faster than the
    written-out logits for a small model's capture, ``[16, 1346, 1374]``, on 2 cores). Where the kernel
    refuses the shape or dtype, it is written out.
    """
    try:
        if q.is_cuda:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                q[None], k[None], (k if v is None else v)[None], None, True, 0.0, False, scale=scale)[:2]
            return lse[0, :, : q.shape[1]].float(), (None if v is None else out[0])
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q[None], k[None], (k if v is None else v)[None], 0.0, False, scale=scale)[:2]
            return lse[0].float(), (None if v is None else out[0])
    except (RuntimeError, AttributeError):  # an unsupported shape, dtype or torch build
        pass
    logits = torch.matmul(q * scale, k.transpose(1, 2)).float()
    out = None if v is None else torch.matmul(logits.softmax(-1).to(v.dtype), v)
    return torch.logsumexp(logits, -1), out


@dataclass
class CaptureTarget:
    """What to accumulate for one batch element of a capture sampling.

    ``kind="forward"``: ``tokens`` are the selected token indices (into that element's condition).
    ``kind="reverse"``: ``tokens`` are the candidate token indices whose cell-normalised attention is kept.
    """

    kind: str
    tokens: torch.Tensor


@dataclass
class CaptureSums:
    """Running sums of one batch element, and how many (block, step) calls went into them."""

    total: torch.Tensor
    by_block: Optional[torch.Tensor] = None
    by_step: Optional[torch.Tensor] = None
    count: int = 0
    block_counts: Optional[torch.Tensor] = None
    step_counts: Optional[torch.Tensor] = None
    transposed: bool = False

    def mean(self) -> Dict[str, torch.Tensor]:
        """Averages: ``total`` over all captured calls, ``by_block``/``by_step`` over their own calls."""
        if self.count == 0:
            raise RuntimeError("nothing was captured: check the capture blocks and steps")
        total = self.total.transpose(1, 2) if self.transposed else self.total
        out = {"mean": total / self.count}
        if self.by_block is not None:
            out["by_block"] = self.by_block / self.block_counts.clamp(min=1).view(-1, *[1] * (self.by_block.ndim - 1))
        if self.by_step is not None:
            out["by_step"] = self.by_step / self.step_counts.clamp(min=1).view(-1, *[1] * (self.by_step.ndim - 1))
        return out


class CaptureState:
    """Accumulators shared by the capture processors of one sampling.

    Args:
        targets: one :class:`CaptureTarget` per batch element.
        num_heads, num_cells, num_blocks, num_steps: sizes.
        blocks, steps: which block and step indices to aggregate (``None`` = all).
        key_mask: ``[B, tokens]`` bool when conditions were padded to a common length.
        detail: also keep per-block and per-step sums for forward targets.
    """

    def __init__(self, targets: Sequence[CaptureTarget], num_heads: int, num_cells: int, num_blocks: int,
                 num_steps: int, blocks: Optional[Sequence[int]] = None, steps: Optional[Sequence[int]] = None,
                 key_mask: Optional[torch.Tensor] = None, detail: bool = True, device="cpu"):
        # token indices live on the compute device: a host-to-device copy per call would block the CPU
        self.targets = [CaptureTarget(t.kind, t.tokens.to(device)) for t in targets]
        self.blocks = None if blocks is None else set(int(b) for b in blocks)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.key_mask = key_mask
        self.sums: List[CaptureSums] = []
        for t in self.targets:
            if t.kind == "forward":
                s = CaptureSums(torch.zeros(num_heads, num_cells, device=device))
                if detail:
                    s.by_block = torch.zeros(num_blocks, num_heads, num_cells, device=device)
                    s.by_step = torch.zeros(num_steps, num_heads, num_cells, device=device)
                    s.block_counts = torch.zeros(num_blocks, device=device)
                    s.step_counts = torch.zeros(num_steps, device=device)
            elif t.kind == "reverse":  # kept as [H, candidates, cells]; mean() returns [H, cells, candidates]
                s = CaptureSums(torch.zeros(num_heads, len(t.tokens), num_cells, device=device), transposed=True)
            else:
                raise ValueError(f"unknown capture target kind {t.kind!r}")
            self.sums.append(s)

    def wants(self, block: int, step: int) -> bool:
        return (self.blocks is None or block in self.blocks) and (self.steps is None or step in self.steps)

    @torch.no_grad()
    def add(self, block: int, step: int, scale: float, q: torch.Tensor, k: torch.Tensor, batch: range) -> None:
        """Accumulate one call: ``q [b, cells, H, D]``, ``k [b, tokens, H, D]`` for batch elements ``batch``.

        Forward targets use ``Σ_{t∈D} softmax(l)_t = exp(logsumexp_D(l) − logsumexp(l))`` (no softmax
        is materialised); reverse targets only need their candidate columns, since a softmax over cells
        treats every token column on its own. Logits come from the network's dtype (tensor cores on
        GPU) and are reduced in float32.
        """
        for row, e in enumerate(batch):
            target, sums = self.targets[e], self.sums[e]
            qh = q[row].transpose(0, 1)  # [H, cells, D]
            kh = k[row].transpose(0, 1)  # [H, tokens, D]
            idx = target.tokens
            if target.kind == "forward":
                if self.key_mask is not None:
                    kh = kh[:, self.key_mask[e]]  # drop padding tokens (they come last)
                lse_all, _ = attention_logsumexp(qh, kh, scale)
                lse_sel, _ = attention_logsumexp(qh, kh[:, idx], scale)
                s = torch.exp(lse_sel - lse_all)  # [H, cells]
                sums.total += s
                if sums.by_block is not None:
                    sums.by_block[block] += s
                    sums.by_step[step] += s
                    sums.block_counts[block] += 1
                    sums.step_counts[step] += 1
            else:
                # [H, candidates, cells]: the softmax over cells runs along the last, contiguous axis
                logits = torch.matmul(kh[:, idx] * scale, qh.transpose(1, 2))
                sums.total += logits.float().softmax(-1)
            sums.count += 1


def capture_result(state: CaptureState, e: int, fed, slat0: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The tensors a capture stage stores for batch element ``e`` of ``state``.

    ``mean`` (and ``by_block``/``by_step``), the target and fed token indices; for the reverse target
    the ``[heads, cells, candidates]`` map is kept in fp16 and ``slat0`` is the sampled latent.
    """
    target = state.targets[e]
    t = {k: v.cpu() for k, v in state.sums[e].mean().items()}
    t["target_tokens"] = target.tokens.cpu()
    t["fed_tokens"] = torch.tensor(fed)
    if target.kind == "reverse":
        t["mean"] = t["mean"].half()
        if slat0 is not None:
            t["slat0"] = slat0.cpu()
    return t


class CaptureProcessor:
    """Fused attention output + running sums of the conditional pass (one instance per block)."""

    def __init__(self, state: CaptureState, tracker: CallTracker, block: int):
        self.state, self.tracker, self.block = state, tracker, block

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        km = None if self.state.key_mask is None else self.state.key_mask[batch.start:batch.stop]
        if self.tracker.branch == "cond" and self.state.wants(self.block, self.tracker.step):
            self.state.add(self.block, self.tracker.step, attn.scale, q, k, batch)
        return sdpa(attn, q, k, v, km)

    def __repr__(self) -> str:
        return f"CaptureProcessor(block={self.block})"


class EnhanceProcessor:
    """Enhanced attention (``E ⊙`` scaled logits) in the conditional pass, fused attention otherwise.

    ``backend``: ``"explicit"`` (exact float32 on any device), ``"flex"`` (FlexAttention with a
    ``score_mod``; CUDA), ``"regions"`` (one fused attention per token region, merged by log-sum-exp;
    exact) or ``"auto"`` (regions: measured faster than flex on an H100, see docs/performance.md,
    and 2.2× faster than explicit on a 2-core CPU for the small model's final latent, 8.1 s against
    17.8 s, equal to 1e-5).
    """

    def __init__(self, tables: EnhancementTables, tracker: CallTracker, backend: str = "auto"):
        if backend not in ENHANCEMENT_BACKENDS:
            raise ValueError(f"enhancement backend must be one of {ENHANCEMENT_BACKENDS}, got {backend!r}")
        self.tables, self.tracker, self.backend = tables, tracker, backend
        self._flex = None
        self._plan = None

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        if self.tracker.branch != "cond":
            return sdpa(attn, q, k, v)
        tables = self.tables
        if tables.cell_regions.device != q.device:
            tables = self.tables = tables.to(q.device)
        backend = "regions" if self.backend == "auto" else self.backend
        if backend == "regions":
            if self._plan is None:
                self._plan = region_plan(tables, q.device, q.dtype)
            return region_split_attention(q, k, v, attn.scale, tables, plan=self._plan)
        if backend == "flex":
            if self._flex is None:
                self._flex = flex_score_mod(tables)
            return flex_enhanced_attention(q, k, v, attn.scale, tables, self._flex)
        return enhanced_attention(q, k, v, attn.scale, tables)


_compiled_flex = None


def flex_enhanced_attention(q, k, v, scale: float, tables: EnhancementTables, score_mod=None) -> torch.Tensor:
    """FlexAttention with the enhancement ``score_mod`` (``flex_attention`` compiled once per process).

    Pass the same ``score_mod`` object on every call of a sampling so the compiled kernel is reused.
    """
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True) if q.is_cuda else flex_attention
    out = _compiled_flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                         score_mod=score_mod or flex_score_mod(tables), scale=scale)
    return out.transpose(1, 2)

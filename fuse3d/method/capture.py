"""Capture of cross-attention (paper §3.3): what alignment needs, as running sums, from a sampling.

Attention is captured in every block of the latent flow (``slat_flow.blocks.i.cross_attn``) and every
sampler step, from the conditional pass only (a :class:`~fuse3d.trellis.sampler.CallTracker` says
which pass is running), DAAM-style: never a ``[heads, cells, tokens]`` map per block and step, but,
per batch element, running sums of

* a *forward* target (a local image): over its selected tokens, the attention normalised over
  tokens → ``[heads, cells]``; optional per-block ``[blocks, heads, cells]`` and per-step
  ``[steps, heads, cells]`` sums for drill-down views;
* a *reverse* target (the global image): for its candidate tokens, the attention normalised over
  cells → ``[heads, cells, candidates]`` (one aggregated map, needed because the unaligned cells it is
  summed over change whenever thresholds are retuned).

:func:`capture` runs the samplings a :class:`CapturePlan` describes, by one of two strategies:

* ``separate`` (faithful to the published code): one sampling per local image, each conditioned on
  that image, plus one with the global image for the reverse alignment, run as one batch (halved on
  out-of-memory);
* ``shared`` (fast): a single sampling conditioned on the global image. At every captured block and
  step, each local image's keys (its tokens through that block's key projection) are scored against
  the same cell queries. The queries then come from a latent guided by the global image rather than
  by the local one; docs/performance.md measures what that changes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..trellis.attention import use_attn_processors
from ..trellis.sampler import CallTracker, ModelCall
from ..trellis.sparse import sparse_cat
from .kernels import attention_logsumexp, sdpa

STRATEGIES = ("separate", "shared")


@dataclass
class CaptureTarget:
    """What to accumulate for one batch element of a capture sampling.

    ``kind="forward"``: ``tokens`` are the selected token indices (into that element's condition).
    ``kind="reverse"``: ``tokens`` are the candidate token indices whose cell-normalised attention is kept.
    ``kind="rows"``: ``tokens`` are cell indices whose whole token-normalised attention rows are kept
    (``[heads, len(tokens), fed tokens]``: only for a few cells, as the explorer asks).
    """

    kind: str
    tokens: torch.Tensor


@dataclass
class CaptureSums:
    """Running sums of one batch element, and how many (block, step) calls went into them (``calls``,
    counted on the device so that a replayed CUDA graph counts too)."""

    total: torch.Tensor
    by_block: Optional[torch.Tensor] = None
    by_step: Optional[torch.Tensor] = None
    calls: Optional[torch.Tensor] = None
    block_counts: Optional[torch.Tensor] = None
    step_counts: Optional[torch.Tensor] = None
    transposed: bool = False

    def __post_init__(self):
        if self.calls is None:
            self.calls = torch.zeros((), device=self.total.device)

    @property
    def count(self) -> int:
        """How many calls were summed (reads the device)."""
        return int(self.calls.item())

    def mean(self) -> Dict[str, torch.Tensor]:
        """Averages: ``total`` over all captured calls, ``by_block``/``by_step`` over their own calls."""
        count = self.count
        if count == 0:
            raise RuntimeError("nothing was captured: check the capture blocks and steps")
        total = self.total.transpose(1, 2) if self.transposed else self.total
        out = {"mean": total / count}
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
        key_mask: ``[B, tokens]`` bool when conditions were padded to a common length (each row's
            real tokens first).
        detail: also keep per-block and per-step sums for forward targets.

    ``step_index`` is the sampler step on the device: :meth:`call_context` sets it before every
    network call, and processors pass it to :meth:`add`, so that a call replayed from a CUDA graph
    adds to its own step's row. With every step captured (``steps`` None; any ``blocks``), a capture
    processor then does the same work at every conditional call, and is replayable
    (:mod:`fuse3d.trellis.graphs`).
    """

    def __init__(self, targets: Sequence[CaptureTarget], num_heads: int, num_cells: int, num_blocks: int,
                 num_steps: int, blocks: Optional[Sequence[int]] = None, steps: Optional[Sequence[int]] = None,
                 key_mask: Optional[torch.Tensor] = None, detail: bool = True, device="cpu"):
        # token indices live on the compute device: a host-to-device copy per call would block the CPU
        self.targets = [CaptureTarget(t.kind, t.tokens.to(device)) for t in targets]
        self.blocks = None if blocks is None else set(int(b) for b in blocks)
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.key_mask = key_mask
        self.key_len = None  # real tokens per row: a slice, not a boolean index (no data-dependent shape)
        if key_mask is not None:
            lengths = key_mask.sum(1)
            prefix = torch.arange(key_mask.shape[1], device=key_mask.device)[None] < lengths[:, None]
            if not torch.equal(prefix, key_mask.bool()):
                raise ValueError("key_mask must keep each row's real tokens first and its padding last")
            self.key_len = [int(n) for n in lengths.tolist()]
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self._step_rows = torch.arange(num_steps, device=device)
        self._one = torch.ones(1, device=device)
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
            elif t.kind == "rows":  # [H, chosen cells, tokens]; the token count is known at the first call
                s = CaptureSums(torch.zeros(0, device=device))
            else:
                raise ValueError(f"unknown capture target kind {t.kind!r}")
            self.sums.append(s)

    def wants(self, block: int, step: int) -> bool:
        return (self.blocks is None or block in self.blocks) and (self.steps is None or step in self.steps)

    @property
    def replayable(self) -> bool:
        """Whether the capture does the same work at every conditional call of a block (every step)."""
        return self.steps is None

    def call_context(self, tracker: CallTracker) -> Callable[[ModelCall], ContextManager]:
        """The sampler's ``call_context`` for this state's sampling: ``tracker``'s, after setting
        :attr:`step_index` on the device (outside the network call)."""
        @contextlib.contextmanager
        def context(call: ModelCall):
            self.step_index.fill_(call.step)
            with tracker(call):
                yield
        return context

    @torch.no_grad()
    def add(self, block: int, step: Union[int, torch.Tensor], scale: float, q: torch.Tensor, k: torch.Tensor,
            batch: range) -> None:
        """Accumulate one call: ``q [b, cells, H, D]``, ``k [b, tokens, H, D]`` for batch elements ``batch``.

        ``step`` is the sampler step: an int, or a one-element device tensor (:attr:`step_index`, as
        the processors pass it).

        Forward targets use ``Σ_{t∈D} softmax(l)_t = exp(logsumexp_D(l) − logsumexp(l))`` (no softmax
        is materialised); reverse targets only need their candidate columns, since a softmax over cells
        treats every token column on its own. Logits come from the network's dtype (tensor cores on
        GPU) and are reduced in float32.
        """
        step_row = step if torch.is_tensor(step) else self._step_rows[step:step + 1]
        for row, e in enumerate(batch):
            target, sums = self.targets[e], self.sums[e]
            qh = q[row].transpose(0, 1)  # [H, cells, D]
            kh = k[row].transpose(0, 1)  # [H, tokens, D]
            if self.key_len is not None:
                kh = kh[:, :self.key_len[e]]  # drop padding tokens (they come last)
            idx = target.tokens
            if target.kind == "forward":
                lse_all, _ = attention_logsumexp(qh, kh, scale)
                lse_sel, _ = attention_logsumexp(qh, kh[:, idx], scale)
                s = torch.exp(lse_sel - lse_all)  # [H, cells]
                sums.total += s
                if sums.by_block is not None:
                    sums.by_block[block] += s
                    sums.by_step.index_add_(0, step_row, s[None])
                    sums.block_counts[block] += 1
                    sums.step_counts.index_add_(0, step_row, self._one)
            elif target.kind == "rows":
                rows = torch.matmul(qh[:, idx] * scale, kh.transpose(1, 2)).float().softmax(-1)  # [H, chosen, tokens]
                if sums.total.numel() == 0:
                    sums.total = torch.zeros_like(rows)
                sums.total += rows
            else:
                # [H, candidates, cells]: the softmax over cells runs along the last, contiguous axis
                logits = torch.matmul(kh[:, idx] * scale, qh.transpose(1, 2))
                sums.total += logits.float().softmax(-1)
            sums.calls += 1


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

    @property
    def replayable(self) -> bool:
        """A CUDA graph per CFG branch may replay it when every step is captured (CaptureState)."""
        return self.state.replayable

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        km = None if self.state.key_mask is None else self.state.key_mask[batch.start:batch.stop]
        if self.tracker.branch == "cond" and self.state.wants(self.block, self.tracker.step):
            self.state.add(self.block, self.state.step_index, attn.scale, q, k, batch)
        return sdpa(attn, q, k, v, km)

    def __repr__(self) -> str:
        return f"CaptureProcessor(block={self.block})"


class SharedCaptureProcessor:
    """Fused output for the global image; running sums for it and for every local image's keys."""

    def __init__(self, state: CaptureState, tracker: CallTracker, block: int, contexts: List[torch.Tensor],
                 reverse_row: int):
        self.state, self.tracker, self.block = state, tracker, block
        self.contexts = contexts  # per local image: its fed tokens [T_k, C]
        self.reverse_row = reverse_row
        self._keys = None  # per local image: its keys in this block (the same at every step)

    @property
    def replayable(self) -> bool:
        """As :attr:`CaptureProcessor.replayable` (the local keys are projected once, at the first call)."""
        return self.state.replayable

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        if self.tracker.branch == "cond" and self.state.wants(self.block, self.tracker.step):
            step = self.state.step_index
            self.state.add(self.block, step, attn.scale, q, k, range(self.reverse_row, self.reverse_row + 1))
            if self._keys is None:
                self._keys = [attn.project_context(ctx.to(q.dtype)[None])[0] for ctx in self.contexts]
            for e, keys in enumerate(self._keys):
                self.state.add(self.block, step, attn.scale, q, keys, range(e, e + 1))
        return sdpa(attn, q, k, v)


# ---------------------------------------------------------------------------------------------- plans
def capture_tokens(num_tokens: int, prefix: int, selected: torch.Tensor, foreground: Optional[torch.Tensor] = None,
                   reverse: bool = False, prefix_tokens: bool = True) -> Tuple[List[int], CaptureTarget]:
    """Which of a condition's tokens a capture sampling is fed, and what it accumulates.

    Forward (a local image): the full ``num_tokens`` (the paper), or — given ``foreground`` patch
    indices — CLS, registers and the foreground patches only (the published code); the target is
    the selected patches ``selected`` (``D_k``). Reverse (the global image, ``reverse=True``): its
    full tokens; the candidates are its selected patches. ``prefix_tokens=False`` (appendix C.1)
    feeds no CLS and register tokens. Targets are positions in what is fed.
    """
    selected = selected.long()
    patch_ids = list(range(num_tokens - prefix)) if reverse or foreground is None else foreground.long().tolist()
    fed = (list(range(prefix)) if prefix_tokens else []) + [prefix + i for i in patch_ids]
    position = {t: j for j, t in enumerate(fed)}
    target = torch.tensor([position[int(t)] for t in selected + prefix], dtype=torch.long)
    return fed, CaptureTarget("reverse" if reverse else "forward", target)


@dataclass
class CaptureItem:
    """One condition to capture: the tokens fed to the sampling (``tokens [T, C]``, rows ``fed`` of
    the condition's tokens), what to accumulate, and the seed of its sampling's noise."""

    name: str
    tokens: torch.Tensor
    fed: Sequence[int]
    target: CaptureTarget
    noise_seed: int


@dataclass
class CapturePlan:
    """Everything the capture samplings of one run need. With ``strategy="shared"`` the last item
    is the global image (the one sampling is conditioned on it) and its seed is that sampling's.

    Attributes:
        structure: ``[N, 4]`` voxel coords; num_cells, num_heads, num_blocks: sizes.
        sampler: the latent sampler's parameters (``steps``, ``cfg_strength``, …).
        blocks, steps: which blocks and sampler steps to average (``None``: all).
        detail: keep per-block and per-step sums for forward targets.
        batch: most samplings per batch for ``separate`` (``None``: all, halved on out-of-memory).
    """

    structure: torch.Tensor
    num_cells: int
    num_heads: int
    num_blocks: int
    items: List[CaptureItem]
    sampler: dict
    strategy: str = "separate"
    blocks: Optional[Sequence[int]] = None
    steps: Optional[Sequence[int]] = None
    detail: bool = True
    batch: Optional[int] = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"capture strategy must be one of {STRATEGIES}, got {self.strategy!r}")


Result = Tuple[Dict[str, torch.Tensor], dict]  # (tensors, meta) of one captured item


def capture(trellis, plan: CapturePlan, which: Sequence[int], progress: bool = False) -> List[Result]:
    """The captures of ``plan.items[i]`` for every ``i`` in ``which`` (``shared``: all items come
    from the one sampling; ``which`` picks what is returned)."""
    if plan.strategy == "shared":
        return shared_capture(trellis, plan, which, progress)
    batch = plan.batch or len(which)
    while True:
        try:
            out: List[Result] = []
            for start in range(0, len(which), batch):
                out.extend(separate_capture(trellis, plan, list(which[start:start + batch]), progress))
            return out
        except RuntimeError as err:
            if not _is_oom(err) or batch == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch = max(1, batch // 2)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _state(plan: CapturePlan, items: List[CaptureItem], key_mask, device) -> CaptureState:
    return CaptureState([it.target for it in items], plan.num_heads, plan.num_cells, plan.num_blocks,
                        plan.sampler["steps"], plan.blocks, plan.steps, key_mask, plan.detail, device=device)


def separate_capture(trellis, plan: CapturePlan, which: List[int], progress: bool = False) -> List[Result]:
    """One batched sampling on the structure, batch element ``b`` conditioned on item ``which[b]``."""
    dev = trellis.device
    coords = plan.structure.to(dev)
    items = [plan.items[i] for i in which]
    t_max = max(it.tokens.shape[0] for it in items)
    cond = torch.zeros(len(items), t_max, items[0].tokens.shape[1])
    key_mask = torch.zeros(len(items), t_max, dtype=torch.bool)
    for b, it in enumerate(items):
        cond[b, : it.tokens.shape[0]] = it.tokens
        key_mask[b, : it.tokens.shape[0]] = True
    ragged = not bool(key_mask.all())
    noise = sparse_cat([trellis.latent_noise(coords, it.noise_seed) for it in items])
    tracker = CallTracker()
    state = _state(plan, items, key_mask.to(dev) if ragged else None, dev)
    procs = {f"blocks.{b}.cross_attn": CaptureProcessor(state, tracker, b) for b in range(plan.num_blocks)}
    with use_attn_processors(trellis.slat_flow, procs):
        slat = trellis.sample_latent(cond.to(dev), noise.coords, noise=noise, neg_cond=torch.zeros_like(cond).to(dev),
                                     progress=progress, call_context=state.call_context(tracker), normalize=False,
                                     **plan.sampler)
    names = ", ".join(it.name for it in items)
    return [(capture_result(state, b, it.fed, slat.feats[slat.layout[b]]),
             {"kind": it.target.kind, "batch": names, "calls": state.sums[b].count, "strategy": "separate"})
            for b, it in enumerate(items)]


def shared_capture(trellis, plan: CapturePlan, which: Sequence[int], progress: bool = False) -> List[Result]:
    """Every item from one sampling conditioned on the last item (the global image)."""
    dev = trellis.device
    coords = plan.structure.to(dev)
    last = len(plan.items) - 1
    contexts = [it.tokens.to(dev) for it in plan.items[:last]]
    tracker = CallTracker()
    state = _state(plan, plan.items, None, dev)
    procs = {f"blocks.{b}.cross_attn": SharedCaptureProcessor(state, tracker, b, contexts, last)
             for b in range(plan.num_blocks)}
    glob = plan.items[last]
    noise = trellis.latent_noise(coords, glob.noise_seed)
    with use_attn_processors(trellis.slat_flow, procs):
        slat = trellis.sample_latent(glob.tokens[None].to(dev), coords, noise=noise, progress=progress,
                                     call_context=state.call_context(tracker), normalize=False, **plan.sampler)
    return [(capture_result(state, i, plan.items[i].fed, slat.feats),
             {"kind": plan.items[i].target.kind, "calls": state.sums[i].count, "strategy": "shared"}) for i in which]

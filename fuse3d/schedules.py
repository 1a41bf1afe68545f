"""Capture schedules.

* ``separate`` (faithful to the published code, :meth:`fuse3d.pipeline.Run._capture_batch`): one
  capture sampling per local image — each conditioned on that image — plus one with the global image
  for the reverse alignment, run together as one batch.
* ``shared`` (fast, this module): a single sampling conditioned on the global image. At every
  captured block and step, each local image's keys (its tokens through that block's ``to_kv``) are
  scored against the same cell queries, so no extra sampling runs. The cell queries then come from a
  latent guided by the global image rather than by the local one; how much that changes the aligned
  regions is measured in ``docs/performance.md``.
"""
from __future__ import annotations

from typing import List

import torch

from .cache import Entry
from .method.processors import CallTracker, CaptureState, CaptureTarget, capture_result, sdpa
from .trellis.attention import use_attn_processors


class SharedCaptureProcessor:
    """Fused output for the global image; running sums for it and for every local image's keys."""

    def __init__(self, state: CaptureState, tracker: CallTracker, block: int, contexts: List[torch.Tensor],
                 reverse_row: int):
        self.state, self.tracker, self.block = state, tracker, block
        self.contexts = contexts  # per local image: its fed tokens [T_k, C]
        self.reverse_row = reverse_row
        self._keys = None  # per local image: its keys in this block (the same at every step)

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        if self.tracker.branch == "cond" and self.state.wants(self.block, self.tracker.step):
            step = self.tracker.step
            if self.reverse_row >= 0:
                self.state.add(self.block, step, attn.scale, q, k, range(self.reverse_row, self.reverse_row + 1))
            if self._keys is None:
                self._keys = [self._local_keys(attn, ctx.to(q.dtype)) for ctx in self.contexts]
            for e, keys in enumerate(self._keys):
                self.state.add(self.block, step, attn.scale, q, keys, range(e, e + 1))
        return sdpa(attn, q, k, v)

    @staticmethod
    def _local_keys(attn, ctx: torch.Tensor) -> torch.Tensor:
        """``[1, T_k, H, D]``: a local image's tokens through this block's key projection (K = first half of ``to_kv``)."""
        keys = attn.to_kv(ctx)[:, : attn.channels].reshape(1, -1, attn.num_heads, attn.head_dim)
        return attn.k_rms_norm(keys) if attn.qk_rms_norm else keys


def shared_capture(run, items: List[int]) -> List[Entry]:
    """All captures of ``run`` from one sampling conditioned on the global image.

    Every local image and the reverse alignment are computed together (``items`` only says which
    of them the caller needs; the others come for free and are returned too, in ``items`` order).
    """
    trellis, dev, K = run.trellis, run.trellis.device, run.K
    coords = run.structure.to(dev)
    specs = [run._capture_spec(i) for i in range(K + 1)]
    contexts = [run.tokens(i)[fed].to(dev) for i, (fed, _) in enumerate(specs[:K])]
    targets: List[CaptureTarget] = [s[1] for s in specs]
    sampler = run._latent_params()
    tracker = CallTracker()
    state = CaptureState(targets, run.num_heads, len(run.cells), run.num_blocks, sampler["steps"],
                         run.params.capture_blocks, run.params.capture_steps, None, run.params.capture_detail, device=dev)
    procs = {f"blocks.{b}.cross_attn": SharedCaptureProcessor(state, tracker, b, contexts, K) for b in range(run.num_blocks)}
    from .pipeline import derive_seed

    noise = trellis.latent_noise(coords, derive_seed(run.params.seed, "capture:global"))
    cond = run.tokens(K)[None].to(dev)
    with use_attn_processors(trellis.slat_flow, procs):
        slat = trellis.sample_latent(cond, coords, noise=noise, progress=run.fuse3d.progress, call_context=tracker,
                                     normalize=False, **sampler)
    return [Entry(capture_result(state, i, specs[i][0], slat.feats),
                  {"kind": specs[i][1].kind, "schedule": "shared", "calls": state.sums[i].count}) for i in items]

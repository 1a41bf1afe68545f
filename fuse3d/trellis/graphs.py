"""A flow's forwards inside one sampling, replayed as CUDA graphs.

A sampling calls its flow once or twice per step (the conditional pass, and the unconditional one on
guided steps) on inputs of fixed shapes: the same voxels and condition tokens every time, new values
of ``x`` and ``t``. On a GPU these forwards are launch-bound (``docs/performance.md``), so recording
each once and replaying it saves the CPU's per-kernel work. The forwards are graph-safe after their
first call on a sampling's voxels (no host copies or syncs, plans kept in the ``SparseTensor``'s
spatial cache; ``tests/test_graphsafe.py``), which is what :class:`GraphedFlow` relies on:

- per condition tensor (one per CFG branch), the first call runs eagerly on a side stream (it builds
  the voxels' plans and lets the kernels pick their algorithms), the second is recorded into a
  :class:`torch.cuda.CUDAGraph` and replayed, and every later call copies ``x`` and ``t`` into the
  graph's static inputs and replays it;
- the graphs of one sampling share one memory pool (they are replayed one at a time, in order);
- the output is cloned out of the graph's static buffer, so a caller may keep it across steps.

A replay skips the Python of every attention processor, so only flows whose processors all do the
same work at every call of a branch are graphed (:func:`replayable`): the default attention, and
processors that say so with ``replayable = True``: Fuse3D's enhancement (its work depends on the CFG
branch alone) and its captures of every step (their per-step row comes from a device step index
that the sampling's ``call_context`` sets outside the network call). A capture of chosen steps and
the interventions decide per call in Python, so those samplings run eagerly. On by default on CUDA;
``TrellisPipeline.cuda_graphs = False`` runs one pipeline eagerly; nothing global changes.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .attention import SDPAProcessor, attn_processors
from .sparse import SparseTensor

__all__ = ["GraphedFlow", "graphable", "on_side_stream", "record_cuda_graph", "replayable"]


def replayable(processor) -> bool:
    """Whether a graph recorded at one call of a CFG branch may stand for every later call of it."""
    return type(processor) is SDPAProcessor or getattr(processor, "replayable", False) is True


def graphable(flow: torch.nn.Module, x) -> bool:
    """Whether :class:`GraphedFlow` may replay ``flow`` on ``x``: on CUDA, with replayable processors."""
    feats = x.feats if isinstance(x, SparseTensor) else x
    return (feats.is_cuda and torch.cuda.is_available()
            and all(replayable(p) for p in attn_processors(flow).values()))


def record_cuda_graph(fn: Callable[[], object], pool=None) -> Tuple[Callable[[], None], object, object]:
    """Record ``fn()`` in a CUDA graph: ``(replay, its static output, the graph's memory pool)``."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph.replay, out, graph.pool()


def on_side_stream(fn: Callable[[], object]):
    """``fn()`` on a side stream (warm-up before a capture, as PyTorch's CUDA-graph notes ask)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


class GraphedFlow:
    """``flow(x, t, cond)`` for one sampling, replayed from CUDA graphs after an eager first call per
    condition tensor (see the module docstring). ``replays`` counts the replayed calls.

    ``record`` and ``warm`` are how a graph is recorded and how the first call runs
    (:func:`record_cuda_graph`, :func:`on_side_stream`); the tests pass CPU stand-ins with the same
    contract to check the static-buffer logic where no GPU is.
    """

    def __init__(self, flow: torch.nn.Module, record=record_cuda_graph, warm=on_side_stream):
        self.flow, self._record_fn, self._warm_fn = flow, record, warm
        self.replays = 0
        self._graphs: Dict[Tuple, Optional[tuple]] = {}  # per branch: None after the eager call, then its graph
        self._pool = None

    def __call__(self, x, t: torch.Tensor, cond: torch.Tensor):
        key = (cond.data_ptr(), tuple(cond.shape), cond.dtype)
        if key not in self._graphs:
            self._graphs[key] = None
            return self._warm_fn(lambda: self.flow(x, t, cond))
        if self._graphs[key] is None:
            self._graphs[key] = self._record(x, t, cond)
        replay, static_x, static_t, out = self._graphs[key]
        if isinstance(x, SparseTensor):
            same = x.coords.shape == static_x.coords.shape and (
                x.coords.data_ptr() == static_x.coords.data_ptr() or torch.equal(x.coords, static_x.coords))
            if not same:
                raise ValueError("a GraphedFlow serves one sampling: the voxels changed between calls")
            static_x.feats.copy_(x.feats)
        else:
            static_x.copy_(x)
        static_t.copy_(t)
        replay()
        self.replays += 1
        return out.replace(out.feats.clone()) if isinstance(out, SparseTensor) else out.clone()

    def _record(self, x, t: torch.Tensor, cond: torch.Tensor) -> tuple:
        static_x = x.replace(x.feats.clone()) if isinstance(x, SparseTensor) else x.clone()
        static_t = t.clone()
        replay, out, self._pool = self._record_fn(lambda: self.flow(static_x, static_t, cond), self._pool)
        return replay, static_x, static_t, out

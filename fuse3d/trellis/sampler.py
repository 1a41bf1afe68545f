"""Euler flow-matching sampler with classifier-free guidance on a time interval.

``t`` runs over ``linspace(1, 0, steps + 1)`` rescaled as ``t' = r·t / (1 + (r − 1)·t)``; the network
gets ``1000·t``; each step is ``x ← x − (t − t_next)·v``. Inside ``cfg_interval`` the velocity is
``(1 + w)·v_cond − w·v_uncond``, outside it the conditional pass alone. The published sampler names
(``FlowEulerSampler``, ``FlowEulerCfgSampler``, ``FlowEulerGuidanceIntervalSampler``) all map here.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .graphs import GraphedFlow, graphable

__all__ = ["CallTracker", "FlowEulerSampler", "ModelCall", "sampler_params", "SamplerOutput", "t_schedule", "SAMPLER_NAMES"]

SAMPLER_NAMES = ("FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler")


def t_schedule(steps: int, rescale_t: float = 1.0) -> np.ndarray:
    """The ``steps + 1`` times (float64) from 1 to 0, rescaled by ``rescale_t``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if rescale_t <= 0:
        raise ValueError(f"rescale_t must be positive, got {rescale_t}")
    t = np.linspace(1, 0, steps + 1)
    return rescale_t * t / (1 + (rescale_t - 1) * t)


@dataclass(frozen=True)
class ModelCall:
    """What one network evaluation inside the sampler is: step index, time and CFG branch.

    ``branch`` is ``"cond"`` or ``"uncond"``. A ``call_context`` given to :meth:`FlowEulerSampler.sample`
    receives this before every network call (capture processors use it to keep the conditional pass).
    """

    step: int
    t: float
    branch: str


def sampler_params(base: dict, steps: Optional[int] = None, cfg_strength: Optional[float] = None) -> dict:
    """A sampler's parameters (``pipeline.json``'s) with optional overrides; ``cfg_interval`` as a list."""
    out = dict(base)
    if steps is not None:
        out["steps"] = int(steps)
    if cfg_strength is not None:
        out["cfg_strength"] = float(cfg_strength)
    out["cfg_interval"] = list(out.get("cfg_interval", (0.0, 1.0)))
    return out


class CallTracker:
    """Remembers the sampler step and CFG branch of the network call in progress.

    Pass it as the sampler's ``call_context``; attention processors read ``step`` and ``branch``.
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


@dataclass
class SamplerOutput:
    samples: Any
    pred_x_t: List[Any] = field(default_factory=list)
    pred_x_0: List[Any] = field(default_factory=list)
    t_seq: Optional[np.ndarray] = None


class FlowEulerSampler:
    """Euler sampler for rectified-flow models (``sigma_min`` as in the published pipelines)."""

    def __init__(self, sigma_min: float = 1e-5):
        self.sigma_min = sigma_min

    def __repr__(self) -> str:
        return f"FlowEulerSampler(sigma_min={self.sigma_min})"

    def _x0(self, x_t, t: float, v):
        return (1 - self.sigma_min) * x_t - (self.sigma_min + (1 - self.sigma_min) * t) * v

    @torch.no_grad()
    def sample(
        self,
        model: Callable,
        noise,
        cond: torch.Tensor,
        neg_cond: Optional[torch.Tensor] = None,
        steps: int = 25,
        rescale_t: float = 1.0,
        cfg_strength: float = 0.0,
        cfg_interval: Sequence[float] = (0.0, 1.0),
        on_step: Optional[Callable[[int, float, Any], None]] = None,
        call_context: Optional[Callable[[ModelCall], ContextManager]] = None,
        progress: bool = True,
        desc: str = "Sampling",
        keep_trajectory: bool = False,
        cuda_graphs: bool = False,
    ) -> SamplerOutput:
        """Integrate from ``noise`` (``t = 1``) to ``t = 0``.

        Args:
            model: ``model(x, t×1000 [B], cond) -> v``.
            noise: ``x`` at ``t = 1`` (dense tensor or SparseTensor); its batch size ``B``.
            cond, neg_cond: ``[B or 1, tokens, C]``; ``neg_cond`` defaults to zeros (TRELLIS's
                unconditional tokens). Batch 1 is repeated to ``B``.
            cfg_strength: guidance weight ``w`` (0 disables the unconditional pass).
            cfg_interval: ``(lo, hi)``: guidance applies while ``lo <= t <= hi``.
            on_step: called as ``on_step(step, t, x)`` after each step with the new ``x`` and the
                time ``t`` it belongs to; a return value other than ``None`` replaces ``x``
                (used e.g. to keep some voxels on a fixed trajectory while inpainting).
            call_context: ``f(ModelCall) -> context manager`` entered around each network call.
            progress: show a tqdm bar.
            keep_trajectory: also return ``x`` and the ``x0`` prediction after every step.
            cuda_graphs: replay the model's forwards as CUDA graphs (:mod:`fuse3d.trellis.graphs`)
                where that is safe: on CUDA, with attention processors that are all replayable;
                elsewhere the flag is ignored and every forward runs eagerly. ``call_context`` is
                still entered around every call (a replay skips only the model's Python).
        """
        lo, hi = cfg_interval
        t_seq = t_schedule(steps, rescale_t)
        batch = noise.batch_size if hasattr(noise, "batch_size") else noise.shape[0]
        cond = _repeat(cond, batch)
        use_cfg = cfg_strength != 0
        if use_cfg:
            neg_cond = torch.zeros_like(cond) if neg_cond is None else _repeat(neg_cond, batch)
        ctx = call_context or (lambda call: contextlib.nullcontext())
        if cuda_graphs and isinstance(model, torch.nn.Module) and graphable(model, noise):
            model = GraphedFlow(model)

        def evaluate(x, t: float, c: torch.Tensor, step: int, branch: str):
            with ctx(ModelCall(step, float(t), branch)):
                return model(x, torch.full((batch,), 1000 * float(t), device=c.device, dtype=torch.float32), c)

        out = SamplerOutput(samples=None, t_seq=t_seq)
        x = noise
        for i in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            t, t_next = float(t_seq[i]), float(t_seq[i + 1])
            v = evaluate(x, t, cond, i, "cond")
            if use_cfg and lo <= t <= hi:
                v_neg = evaluate(x, t, neg_cond, i, "uncond")
                v = (1 + cfg_strength) * v - cfg_strength * v_neg
            x0 = self._x0(x, t, v) if keep_trajectory else None
            x = x - (t - t_next) * v
            if keep_trajectory:
                out.pred_x_t.append(x)
                out.pred_x_0.append(x0)
            if on_step is not None:
                replaced = on_step(i, t_next, x)
                if replaced is not None:
                    x = replaced
        out.samples = x
        return out


def _repeat(c: torch.Tensor, batch: int) -> torch.Tensor:
    if c.shape[0] == batch:
        return c
    if c.shape[0] == 1:
        return c.expand(batch, *c.shape[1:])
    raise ValueError(f"condition batch {c.shape[0]} does not match the sample batch {batch}")


def make_sampler(name: str, args: dict) -> FlowEulerSampler:
    """A sampler from a ``pipeline.json`` entry (``{"name", "args"}``)."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; supported: {', '.join(SAMPLER_NAMES)}")
    return FlowEulerSampler(**args)

"""Timing helpers shared by the benchmarks: repeats with their spread, GPU kernel time, FLOP floors.

A lent GPU is noisy and a flow forward is launch-bound, so one number says little. Every figure here
is the median of several repeats with its min–max; on CUDA the wall time comes with the GPU's busy
time (the sum of its kernels' durations, from ``torch.profiler``), and a forward's *floor* is its
FLOPs (``torch.utils.flop_counter``) divided by the measured rate of one large matmul, so that

    MFU = floor / wall time

says how far a forward is from what the GPU could do. On the CPU the GPU fields are ``nan``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

__all__ = ["Stats", "measure", "kernel_seconds", "count_flops", "matmul_rate", "floor_row"]


@dataclass
class Stats:
    """Seconds of ``repeats`` calls: their median, min and max; GPU busy seconds; peak GPU memory."""

    seconds: List[float]
    gpu_seconds: float = math.nan
    peak_gib: float = math.nan

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max − min) / median: the noise the ≤ 10 % targets are judged on (``nan`` for one repeat)."""
        if len(self.seconds) < 2 or not self.median:
            return math.nan
        return (max(self.seconds) - min(self.seconds)) / self.median

    def row(self, name: str, **extra) -> dict:
        out = {"scenario": name, "median_s": round(self.median, 6), "min_s": round(min(self.seconds), 6),
               "max_s": round(max(self.seconds), 6), "spread": _round(self.spread, 3),
               "all_s": [round(s, 6) for s in self.seconds], "gpu_s": _round(self.gpu_seconds, 6),
               "peak_gib": _round(self.peak_gib, 2)}
        return {**out, **extra}

    def line(self, name: str) -> str:
        gpu = "" if math.isnan(self.gpu_seconds) else f"  GPU {self.gpu_seconds:7.3f} s"
        peak = "" if math.isnan(self.peak_gib) else f"  peak {self.peak_gib:5.2f} GiB"
        return (f"{name:44s} {self.median:8.3f} s  ({min(self.seconds):.3f}–{max(self.seconds):.3f}, "
                f"n={len(self.seconds)}){gpu}{peak}")


def _round(x: float, digits: int):
    return None if math.isnan(x) else round(x, digits)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str, repeats: int = 3, warmup: int = 0,
            setup: Optional[Callable[[], None]] = None, gpu_time: bool = True) -> Stats:
    """Time ``repeats`` calls of ``fn`` (after ``warmup`` untimed ones); ``setup()`` runs untimed before each.

    On CUDA, one more call under the profiler gives the GPU's busy seconds (``gpu_time=False`` skips it).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    if device == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        if setup:
            setup()
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else math.nan
    gpu = math.nan
    if device == "cuda" and gpu_time:
        if setup:
            setup()
        gpu = kernel_seconds(fn, device)
    return Stats(seconds, gpu, peak)


def kernel_seconds(fn: Callable[[], object], device: str) -> float:
    """The GPU's busy seconds during one call: the sum of its kernels' durations (``nan`` off CUDA)."""
    if device != "cuda":
        return math.nan
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        _sync(device)
    total_us = sum(e.device_time_total for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    return total_us / 1e6


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as torch's counter sees them (matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device: str, dtype: torch.dtype = torch.float16, n: Optional[int] = None, repeats: int = 10) -> float:
    """Measured FLOP/s of one ``n × n`` matmul in ``dtype`` (median of ``repeats``): the floors' yardstick.

    ``n`` defaults to 8192 on CUDA (large enough to reach the tensor cores' rate) and 1024 elsewhere.
    """
    n = n or (8192 if device == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    stats = measure(lambda: a @ b, device, repeats=repeats, warmup=2, gpu_time=False)
    return 2 * n**3 / stats.median


def floor_row(name: str, fn: Callable[[], object], device: str, rate: float, repeats: int = 20) -> dict:
    """One forward against its floor: FLOPs, floor, wall (median, min–max), GPU busy time and MFU."""
    flops = count_flops(fn)
    stats = measure(fn, device, repeats=repeats, warmup=3)
    floor = flops / rate
    row = stats.row(name, tflop=round(flops / 1e12, 4), floor_ms=round(1e3 * floor, 3),
                    mfu=round(floor / stats.median, 3))
    row["mfu_gpu_time"] = None if math.isnan(stats.gpu_seconds) else round(floor / stats.gpu_seconds, 3)
    return row


"""bench/timing.py: the benchmarks' medians, FLOP counts and floors (on the CPU)."""
import math
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import timing  # noqa: E402


def test_measure_reports_every_repeat_with_median_and_spread():
    calls = []
    stats = timing.measure(lambda: calls.append(1), "cpu", repeats=5, warmup=2, setup=lambda: calls.append(0))
    assert calls.count(1) == 7 and calls.count(0) == 7  # setup before every call, warm-ups included
    assert len(stats.seconds) == 5 and min(stats.seconds) <= stats.median <= max(stats.seconds)
    assert math.isnan(stats.gpu_seconds) and math.isnan(stats.peak_gib)  # no GPU figures on the CPU
    row = stats.row("x", extra=1)
    assert row["median_s"] == round(stats.median, 6) and row["gpu_s"] is None and row["extra"] == 1
    assert math.isnan(timing.measure(lambda: None, "cpu", repeats=1).spread)  # one repeat has no spread
    with pytest.raises(ValueError, match="at least 1"):
        timing.measure(lambda: None, "cpu", repeats=0)


def test_flops_and_floor_of_a_linear_layer():
    layer = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(128, 64)
    flops = 2 * 128 * 64 * 32
    assert timing.count_flops(lambda: layer(x)) == flops

    def forward():  # about 10 ms, so that the rounded figures stay close to the exact ones
        time.sleep(0.01)
        return layer(x)

    rate = flops / 0.005  # FLOP/s: a floor of 5 ms
    row = timing.floor_row("linear", forward, "cpu", rate, repeats=3)
    assert row["tflop"] == round(flops / 1e12, 4) and row["floor_ms"] == pytest.approx(5.0)
    assert row["mfu"] == pytest.approx(0.005 / row["median_s"], abs=2e-3)  # printed to 3 decimals
    assert 0 < row["mfu"] < 0.5 and row["mfu_gpu_time"] is None
    assert timing.matmul_rate("cpu", torch.float32, n=128, repeats=3) > 0

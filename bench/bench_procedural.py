"""Time the procedural data pipeline on one CPU core: voxelise and render 10 random objects.

    python bench/bench_procedural.py [--count 10] [--size 518] [--seed 0]

For each object: ``random_object`` (build), ``voxelize`` at 64³, ``render`` of the implicit spec at
``size``² (plain and 2× supersampled) and of its voxels (DDA), from a random view. Prints one line per
object and the medians. Threads of BLAS-backed libraries are pinned to 1 before numpy is imported.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuse3d.data import KINDS, random_object, random_view, render, voxelize  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    print(f"{'seed':>4} {'kind':<9} {'parts':>5} {'voxels':>6} {'build':>7} {'voxelize':>8} "
          f"{'render':>7} {'render2x':>8} {'vox_render':>10}  (seconds, {args.size}²)")
    for i in range(args.count):
        seed = args.seed + i
        kind = KINDS[i % len(KINDS)]
        spec, t_build = timed(lambda: random_object(seed, kind))
        vox, t_vox = timed(lambda: voxelize(spec))
        view = random_view(seed)
        _, t_r = timed(lambda: render(spec, view, args.size))
        _, t_r2 = timed(lambda: render(spec, view, args.size, supersample=2))
        _, t_rv = timed(lambda: render(vox, view, args.size))
        rows.append((t_build, t_vox, t_r, t_r2, t_rv))
        print(f"{seed:>4} {kind:<9} {len(spec.parts):>5} {len(vox):>6} {t_build:7.4f} {t_vox:8.4f} "
              f"{t_r:7.3f} {t_r2:8.3f} {t_rv:10.3f}")
    med = [statistics.median(c) for c in zip(*rows)]
    mx = [max(c) for c in zip(*rows)]
    print(f"median {'':<15} {med[0]:7.4f} {med[1]:8.4f} {med[2]:7.3f} {med[3]:8.3f} {med[4]:10.3f}")
    print(f"max    {'':<15} {mx[0]:7.4f} {mx[1]:8.4f} {mx[2]:7.3f} {mx[3]:8.3f} {mx[4]:10.3f}")


if __name__ == "__main__":
    main()

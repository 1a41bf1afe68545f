"""Wall time of one sweep, in process and on a local Ray cluster, from one run (fresh caches each).

    python bench/bench_sweep.py [--model DIR] [--cases 16] [--workers 2] [--threads N] [--latent-steps 2]

Default: the tiny random-weight model (written to a temporary folder), 16 procedural cases
(seeds 910000…) × 50 settings (10 head sets × 5 thresholds), captures at 2 latent steps, on the
CPU. Prints each executor's wall time, the per-case seconds (median, min–max), the retune rate
(settings per second of a case's cached retunes) and whether the two tables agree.
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fuse3d import Fuse3D
from fuse3d.sweep import InProcess, RayExecutor, Sweep, cases


def grid_of(num_heads: int) -> dict:
    heads = [[h] for h in range(min(num_heads, 8))] + [[0, 1], list(range(num_heads))]
    return {"heads": heads[:10], "threshold": [0.3, 0.4, 0.5, 0.6, 0.7]}


def timed(sweep: Sweep, pipe, executor) -> tuple:
    t = time.perf_counter()
    result = sweep.run(pipe, executor=executor, progress=False)
    return result, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the tiny random-weight model)")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of each Ray task (default: this process's, so that the tables agree)")
    ap.add_argument("--latent-steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from fuse3d.tiny_model import write_tiny_model

            args.model = str(write_tiny_model(Path(tmp) / "tiny"))
        load = lambda name: Fuse3D.from_pretrained(args.model, device=args.device, cache_dir=Path(tmp) / name,  # noqa: E731
                                                   progress=False)
        pipe = load("in-process")
        sweep = Sweep(cases(seeds=range(910000, 910000 + args.cases)), grid_of(pipe.trellis.slat_flow.num_heads),
                      params={"latent_steps": args.latent_steps, "structure_steps": args.latent_steps})
        print(f"model: {pipe.model_name}; {len(sweep.cases)} cases × {len(sweep.settings)} settings; "
              f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
        local, local_s = timed(sweep, pipe, InProcess())
        t = time.perf_counter()
        again = sweep.run(pipe, progress=False)  # every case's rows from the cache
        cached_s = time.perf_counter() - t
        # retune rate: one case's settings from its cached stages (rows not cached: a new setting list)
        run = sweep.cases[0]
        from fuse3d.sweep import _case_rows

        loaded = run.load()
        t = time.perf_counter()
        _case_rows(run, loaded, pipe, sweep.settings, sweep.params, False, "true")
        retune_rate = len(sweep.settings) / (time.perf_counter() - t)

        remote_pipe = load("ray")
        executor = RayExecutor("local", workers=args.workers, threads=args.threads)
        t = time.perf_counter()
        executor._init()
        ray_start = time.perf_counter() - t
        remote, remote_s = timed(sweep, remote_pipe, executor)

    same = ["case", "setting", "local", "iou", "aligned_cells", "global_tokens", "lambda"]
    per_case = local.table.drop_duplicates("case")["seconds"].to_numpy()
    report = {
        "model": local.model, "cases": len(sweep.cases), "settings": len(sweep.settings),
        "in_process_s": round(local_s, 1),
        "ray_s": round(remote_s, 1), "ray_workers": args.workers,
        "ray_threads": executor.threads or torch.get_num_threads(), "ray_start_s": round(ray_start, 1),
        "speed_up": round(local_s / remote_s, 2),
        "per_case_s": {"median": round(float(np.median(per_case)), 2), "min": round(float(per_case.min()), 2),
                       "max": round(float(per_case.max()), 2)},
        "all_cached_s": round(cached_s, 1), "retunes_per_s": round(retune_rate, 1),
        "tables_equal": bool(local.table[same].equals(remote.table[same])),
        "failed": int(len(local.failures) + len(remote.failures)), "statuses_again": sorted(set(again.table["status"])),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

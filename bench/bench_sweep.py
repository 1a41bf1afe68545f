"""Wall time of one sweep, in process and on a local Ray cluster, from one run (fresh caches each).

    python bench/bench_sweep.py [--model DIR | --full-size] [--cases 16] [--workers 2] [--gpus-per-case G]
                                [--threads N] [--latent-steps 2] [--kill-after S] [--json out.json]

Default: the tiny random-weight model (written to a temporary folder), 16 procedural cases
(seeds 910000…) × 50 settings (10 head sets × 5 thresholds), captures at 2 latent steps, on the
CPU. Prints each executor's wall time, the per-case seconds (median, min–max), the retune rate
(settings per second of a case's cached retunes) and whether the two tables agree.

``--full-size`` writes a TRELLIS-image-large-architecture model with random weights (every network
of the published folder, DINOv2 ViT-L/14 with registers included; 1.71 billion parameters) to the temporary
folder first, as issue 18's GPU sweep asks. On one GPU, ``--workers 2 --gpus-per-case 0.5`` puts
two Ray workers on it. ``--kill-after S`` runs the Ray sweep once more on a fresh cache, with the
worker of the first case to start killed S seconds into that case: Ray runs the case again, and the
report says what that cost and whether the table is still complete and equal to the in-process one.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuse3d import Fuse3D  # noqa: E402
from fuse3d.sweep import InProcess, RayExecutor, Sweep, cases, run_job  # noqa: E402


def grid_of(num_heads: int) -> dict:
    heads = [[h] for h in range(min(num_heads, 8))] + [[0, 1], list(range(num_heads))]
    return {"heads": heads[:10], "threshold": [0.3, 0.4, 0.5, 0.6, 0.7]}


def write_full_size_model(folder: Path) -> Path:
    """TRELLIS-image-large's networks (the published folder's names and arguments) with random
    weights, and a random DINOv2 ViT-L/14 with registers, as a TRELLIS-format folder."""
    from bench_fuse3d import SAMPLERS
    from bench_trellis_forward import FULL_SIZE, MANIFEST, full_size
    from fuse3d.trellis.dinov2 import DinoV2Encoder
    from fuse3d.trellis.pipeline import MODEL_KEYS, write_pipeline
    from fuse3d.tiny_model import randomize_

    manifest = json.loads(MANIFEST.read_text())
    key_of = {attr: key for key, attr in MODEL_KEYS.items()}  # pipeline.json's name of each network
    networks = {key_of[attr]: (full_size(ckpt, "cpu", torch.float32), ckpt, manifest[ckpt]["name"], manifest[ckpt]["args"])
                for attr, ckpt in FULL_SIZE.items()}
    encoder = randomize_(DinoV2Encoder("vit_large_patch14_reg4_dinov2", 518).eval(), torch.Generator().manual_seed(1))
    return write_pipeline(folder, networks, (encoder, "dinov2_vitl14_reg_random"), SAMPLERS["sparse_structure_sampler"],
                          SAMPLERS["slat_sampler"], {"mean": [0.0] * 8, "std": [1.0] * 8},
                          fuse3d_meta={"model_name": "trellis-large-random",
                                       "description": "TRELLIS-image-large architecture with random weights, written by "
                                                      "bench/bench_sweep.py; outputs are meaningless"})


def dying_once(marker: str, after_s: float):
    """A task whose first run, of all the sweep's, kills its own worker process ``after_s`` seconds in
    (the marker file, created atomically, says which run that was; nested, so that Ray ships it by value)."""
    def task(job_json: str) -> str:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            threading.Timer(after_s, os._exit, args=(1,)).start()
        return run_job(job_json)
    return task


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
    ap.add_argument("--full-size", action="store_true",
                    help="a TRELLIS-image-large-architecture model with random weights (written to a temporary folder)")
    ap.add_argument("--gpus-per-case", type=float, default=None,
                    help="GPUs each Ray task asks for (default: 1 with CUDA, else 0; 0.5 puts two on a GPU)")
    ap.add_argument("--kill-after", type=float, default=None,
                    help="also run the Ray sweep with the first case's worker killed this many seconds into it")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()
    if args.model and args.full_size:
        ap.error("--model and --full-size exclude each other")

    with tempfile.TemporaryDirectory() as tmp:
        if args.full_size:
            t = time.perf_counter()
            args.model = str(write_full_size_model(Path(tmp) / "full-size"))
            print(f"wrote the full-size random-weight model in {time.perf_counter() - t:.0f} s")
        elif args.model is None:
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
        executor = RayExecutor("local", workers=args.workers, gpus_per_case=args.gpus_per_case, threads=args.threads)
        t = time.perf_counter()
        executor._init()
        ray_start = time.perf_counter() - t
        remote, remote_s = timed(sweep, remote_pipe, executor)
        killed = None
        if args.kill_after is not None:
            marker = Path(tmp) / "killed"
            dying = RayExecutor("local", workers=args.workers, gpus_per_case=args.gpus_per_case, threads=args.threads,
                                task=dying_once(str(marker), args.kill_after))
            killed, killed_s = timed(sweep, load("ray-killed"), dying)
            if not marker.exists():
                raise RuntimeError("no task started: nothing was killed")

    same = ["case", "setting", "local", "iou", "aligned_cells", "global_tokens", "lambda"]
    per_case = local.table.drop_duplicates("case")["seconds"].to_numpy()
    report = {
        "model": local.model, "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
        "cases": len(sweep.cases), "settings": len(sweep.settings),
        "in_process_s": round(local_s, 1),
        "ray_s": round(remote_s, 1), "ray_workers": args.workers, "ray_gpus_per_case": (
            executor.gpus_per_case if executor.gpus_per_case is not None else int(torch.cuda.is_available())),
        "ray_threads": executor.threads or torch.get_num_threads(), "ray_start_s": round(ray_start, 1),
        "speed_up": round(local_s / remote_s, 2),
        "per_case_s": {"median": round(float(np.median(per_case)), 2), "min": round(float(per_case.min()), 2),
                       "max": round(float(per_case.max()), 2)},
        "all_cached_s": round(cached_s, 1), "retunes_per_s": round(retune_rate, 1),
        "tables_equal": bool(local.table[same].equals(remote.table[same])),
        "failed": int(len(local.failures) + len(remote.failures)), "statuses_again": sorted(set(again.table["status"])),
    }
    if killed is not None:
        report["killed_worker"] = {
            "after_s": args.kill_after, "ray_s": round(killed_s, 1), "cost_s": round(killed_s - remote_s, 1),
            "rows": len(killed.table), "rows_expected": len(local.table), "failed": int(len(killed.failures)),
            "table_equal_in_process": bool(local.table[same].equals(killed.table[same]))}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

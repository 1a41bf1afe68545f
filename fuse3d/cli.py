"""The ``fuse3d`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_write_tiny_model(args) -> int:
    from .tiny_model import TINY_MODEL_NAME, write_tiny_model

    path = write_tiny_model(args.path, seed=args.seed)
    print(f"wrote {TINY_MODEL_NAME} (random weights, outputs are meaningless) to {path}")
    return 0


def _cmd_info(args) -> int:
    from .trellis.pipeline import load_pipeline

    from .pipeline import Fuse3D

    pipe = load_pipeline(args.model, dinov2=args.dinov2, progress=False)
    defaults = Fuse3D(pipe, progress=False).defaults
    print(f"model: {pipe.model_name} ({pipe.source})")
    for name, module in pipe.named_children():
        n = sum(p.numel() for p in module.parameters())
        print(f"  {name:18s} {type(module).__name__:28s} {n / 1e6:9.2f} M parameters")
    print(f"  alignment defaults: {defaults.describe()}")
    print(f"  structure sampler: {pipe.ss_sampler_params}")
    print(f"  latent sampler:    {pipe.slat_sampler_params}")
    return 0


def _description(pipe) -> str:
    """`` — what the model is``, when its folder says."""
    return f" — {pipe.trellis.description}" if getattr(pipe.trellis, "description", "") else ""


def _run_spec(spec_path, out, model=None, device=None, cache_dir=None, formats=("glb", "ply"), progress=True) -> dict:
    """Run a spec and write the assets, a summary and (when viz is installed) nothing else."""
    import json
    import time
    from pathlib import Path

    from .pipeline import Fuse3D
    from .spec import load_spec

    spec = load_spec(spec_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = Fuse3D.from_pretrained(model or spec.model, device=device, cache_dir=cache_dir, progress=progress)
    desc = _description(pipe)
    print(f"model: {pipe.model_name} ({pipe.trellis.source}){desc}", flush=True)
    print(f"alignment defaults: {pipe.defaults.describe()}", flush=True)
    run = pipe.run(spec.global_condition, spec.local_conditions, seed=spec.seed, **spec.params)
    timings = {"load_and_run_s": round(time.perf_counter() - t0, 2)}
    written = []
    for fmt in formats:
        t = time.perf_counter()
        written.append(str(run.export(out / f"asset.{fmt}")))
        timings[f"export_{fmt}_s"] = round(time.perf_counter() - t, 2)
    summary = {**run.summary(), "spec": str(Path(spec_path).resolve()), "outputs": written, "timings": timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"global: {summary['global']}; locals (selected / foreground patches): " + ", ".join(
        f"{n} {s}/{f}" for n, s, f in zip(summary["locals"], summary["selected_patches"], summary["foreground_patches"])))
    print(f"voxels {summary.get('voxels')}, cells {summary.get('cells')}, aligned cells per local "
          f"{summary.get('aligned_cells')}, unaligned {summary.get('unaligned_cells')}, global tokens "
          f"{summary.get('global_tokens')}, λ {[round(v, 3) for v in summary.get('lambdas', [])]}")
    print("wrote " + ", ".join(written + [str(out / "summary.json")]))
    print(f"model: {pipe.model_name}{desc}")
    return summary


def _cmd_run(args) -> int:
    _run_spec(args.spec, args.out, args.model, args.device, args.cache, progress=not args.quiet)
    return 0


def _cmd_demo(args) -> int:
    from .spec import example_spec

    _run_spec(example_spec(args.example), args.out, args.model, args.device, args.cache, progress=not args.quiet)
    return 0


def _cmd_sweep(args) -> int:
    import json

    from .pipeline import Fuse3D
    from .sweep import executor_for, load_sweep_spec

    sweep, model = load_sweep_spec(args.spec)
    pipe = Fuse3D.from_pretrained(args.model or model, device=args.device, cache_dir=args.cache, progress=False)
    desc = _description(pipe)
    print(f"model: {pipe.model_name} ({pipe.trellis.source}){desc}", flush=True)
    print(f"{len(sweep.cases)} cases × {len(sweep.settings)} settings; grid fields that cost samplings per value: "
          f"{sweep.expensive or 'none (every setting is a retune from the cache)'}", flush=True)
    executor = executor_for(args.ray, args.workers, args.gpus_per_case)
    result = sweep.run(pipe, executor=executor, device=args.device, progress=not args.quiet)
    written = result.save(args.out)
    print(f"{len(result.table)} rows in {result.seconds:.1f} s ({result.executor}); {len(result.failures)} failed case(s)")
    for f in result.failures.itertuples():
        print(f"  failed: {f.case}: {f.error}")
    if result.ok["iou"].notna().any():
        print("best mean IoU:", json.dumps(result.best()))
    print("wrote " + ", ".join(str(w) for w in written))
    print(f"model: {pipe.model_name}{desc}")
    return 1 if len(result.failures) == len(sweep.cases) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fuse3d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("write-tiny-model", help="write the tiny random-weight model in TRELLIS format")
    p.add_argument("path", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_write_tiny_model)

    for name, helptext in (("run", "run a TOML/YAML spec and write GLB, PLY and summary.json"),
                           ("demo", "run a bundled example on the bundled default model")):
        p = sub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("spec", help="spec file (.toml or .yaml)")
        else:
            p.add_argument("--example", default="chair", help="bundled example: chair, car, robot, conflict")
        p.add_argument("--out", default="out/" + name, help="output folder (default: out/%(prog)s)")
        p.add_argument("--model", default=None, help="model folder or Hugging Face repo id (default: the spec's, else the bundled model)")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.add_argument("--cache", default=None, help="disk cache folder for stage results")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=_cmd_run if name == "run" else _cmd_demo)

    p = sub.add_parser("sweep", help="cases × a grid of parameters (TOML spec) into a table (CSV, Parquet) and sweep.json")
    p.add_argument("spec", help="sweep spec (.toml; see fuse3d.sweep.load_sweep_spec)")
    p.add_argument("--out", default="out/sweep", help="output folder (default: out/sweep)")
    p.add_argument("--model", default=None, help="model folder or Hugging Face repo id (default: the spec's, else the bundled model)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cache", default=None, help="disk cache folder (needed with --ray: the workers share it)")
    p.add_argument("--ray", default=None, metavar="auto|local|ADDRESS",
                   help="one Ray task per case: a running cluster (auto, else a new local one), a new local cluster, "
                        "or a cluster's address (pip install 'fuse3d[ray]')")
    p.add_argument("--workers", type=int, default=None, help="CPUs of a new local Ray cluster (default: all)")
    p.add_argument("--gpus-per-case", type=float, default=None,
                   help="GPUs each Ray task takes (default: 1 with CUDA, else 0; 0.5 puts two on one GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("info", help="list the networks of a TRELLIS-format model folder or repo")
    p.add_argument("model", help="model folder or Hugging Face repo id")
    p.add_argument("--dinov2", default=None, help="DINOv2 weights (file, folder or HF repo id)")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

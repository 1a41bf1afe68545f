"""Stage times of one Fuse3D run on the CPU with the bundled default model (what a notebook waits for).

    python bench/bench_cpu_default.py [--example chair] [--model DIR] [--threads N] [--capture-strategy shared]

Runs the example's full pipeline with an empty cache and prints each stage's wall time (``run.timings()``),
then, in the same process, a plain TRELLIS generation of the same model from the global image alone
(its preprocessing, encoding and structure as the run timed them, plus one latent sampling with the
same sampler settings), the ratio of the two, and the ratio's floor where every latent sampling
costs what the plain one does (``floor_over_plain``: K + 1 capture samplings with ``separate``, one
with ``shared``, and the final one); the mesh decoder network on the final latent (what
the notebooks' mesh views wait for, marching cubes excluded); then the final latent again with each CPU
enhancement backend (``explicit``, ``regions``) and how far their latents differ; and one latent-flow
forward at batch 1 and 2 (what running a step's two CFG passes as one batch would gain).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import measure  # noqa: E402

from fuse3d import Fuse3D
from fuse3d.spec import example_spec, load_spec
from fuse3d.stages import STAGES, ParamView, sampler


def plain_generation(run) -> tuple:
    """Seconds of one TRELLIS generation from the global image: what the run spent preparing and
    encoding it and sampling the structure, plus one latent sampling conditioned on it alone; and
    the seconds of that latent sampling."""
    g, times = run.K, run.timings()
    shared = sum(times.get(k, 0.0) for k in (f"prepare[{g}]", f"encode[{g}]", "structure"))
    view = ParamView(run.params, STAGES["final"])
    cond = run.tokens(g)[None].to(run.trellis.device)
    t = time.perf_counter()
    run.trellis.sample_latent(cond, run.structure.to(run.trellis.device), seed=0, progress=False,
                              **sampler(run, view, "latent"))
    latent = time.perf_counter() - t
    return shared + latent, latent


def latent_forward_ms(run, batches=(1, 2)) -> dict:
    """Median ms (5 repeats) of one latent-flow forward on the run's voxels at each batch size: whether
    running a sampler step's conditional and unconditional passes as one batch of 2 would pay here."""
    from fuse3d.trellis.sparse import SparseTensor, sparse_cat

    flow, coords = run.trellis.slat_flow, run.structure.int()
    cond = run.tokens(run.K)[None].float()
    out = {}
    for b in batches:
        x = sparse_cat([SparseTensor(torch.randn(len(coords), flow.in_channels), coords) for _ in range(b)])
        t, c = torch.full((b,), 500.0), cond.expand(b, -1, -1)
        with torch.no_grad():
            out[b] = round(1e3 * measure(lambda: flow(x, t, c), "cpu", repeats=5, warmup=1).median, 1)
    return out


def floor_over_plain(run, plain: float, latent: float) -> float:
    """The ratio the run could reach on a device where a latent sampling costs the same whatever the
    method adds: its capture samplings (K + 1 with ``separate``, one with ``shared``) and the final
    sampling, each at the price of the plain one, in place of the plain one."""
    samplings = (run.K + 1 if run.params.capture_strategy == "separate" else 1) + 1
    return (plain + (samplings - 1) * latent) / plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", default="chair")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled default model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--capture-strategy", default=None, choices=("separate", "shared"),
                    help="override the example's capture strategy (default: its own, the paper's 'separate')")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(example_spec(args.example))
    params = dict(spec.params, **({"capture_strategy": args.capture_strategy} if args.capture_strategy else {}))
    with tempfile.TemporaryDirectory() as cache:
        pipe = Fuse3D.from_pretrained(args.model, device="cpu", cache_dir=cache, progress=False)
        t0 = time.perf_counter()
        run = pipe.run(spec.global_condition, spec.local_conditions, seed=spec.seed, **params)
        total = time.perf_counter() - t0
        plain, latent = plain_generation(run)
        forward_ms = latent_forward_ms(run)
        t = time.perf_counter()
        run.trellis.decode(run.final.to(run.trellis.device), ["mesh"])  # the mesh decoder network (views)
        mesh_decoder = time.perf_counter() - t
        finals = {}
        for backend in ("explicit", "regions"):
            t = time.perf_counter()
            finals[backend] = (run.retune(enhancement_backend=backend).final.feats, time.perf_counter() - t)
    diff = (finals["explicit"][0] - finals["regions"][0]).abs().max().item()
    print(json.dumps({
        "model": pipe.model_name, "example": args.example, "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "run_s": round(total, 2),
        "capture_strategy": run.params.capture_strategy,
        "plain_generation_s": round(plain, 2), "plain_latent_sampling_s": round(latent, 2),
        "run_over_plain": round(total / plain, 2), "floor_over_plain": round(floor_over_plain(run, plain, latent), 2),
        "stages_s": {k: round(v, 3) for k, v in run.timings().items()},
        "mesh_decoder_s": round(mesh_decoder, 2),
        "latent_forward_ms_by_batch": forward_ms,
        "final_s": {b: round(f[1], 2) for b, f in finals.items()}, "final_max_abs_diff": diff,
    }, indent=1))


if __name__ == "__main__":
    main()

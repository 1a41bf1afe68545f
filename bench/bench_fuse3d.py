"""Fuse3D against one TRELLIS generation, full size, on one GPU (issue 5).

    python bench/bench_fuse3d.py                 # TRELLIS-image-large architecture, random weights, fp16 blocks
    python bench/bench_fuse3d.py --model DIR     # any TRELLIS-format folder (e.g. the tiny model, for a CPU smoke run)

Measured in one run, each with its wall time and peak GPU memory:
  (a) one plain single-image TRELLIS generation: structure sampling + latent sampling + mesh decoder network;
  (b) Fuse3D with 1, 2, 3 local images, capture strategies ``separate`` and ``shared``: capture, alignment,
      reverse alignment, final sampling, mesh decoder network (+ the same structure sampling as (a));
  (c) a retune after a λ change with a warm cache (final sampling + mesh decoder network);
  (d) the published-style strategy: K+2 sequential samplings with explicit attention in every block,
      full softmax maps (over tokens and over cells) accumulated in every block as the published code
      does, and a dense enhancement matrix in the final run.
The latent stages run on a fixed spherical shell of ~20k voxels at 64³ so that every scenario has the
same structure (random weights would otherwise decide it); sampler settings are TRELLIS-image-large's
defaults (structure: 25 steps, CFG 7.5; latent: 25 steps, CFG 3.0; interval [0.5, 1]; rescale_t 3).
Marching cubes (CPU) is excluded from every scenario and reported once.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fuse3d import Fuse3D  # noqa: E402
from fuse3d.cache import Cache  # noqa: E402
from fuse3d.trellis.sampler import CallTracker  # noqa: E402
from fuse3d.spec import example_spec, load_spec  # noqa: E402
from bench_trellis_forward import full_size  # noqa: E402
from fuse3d.tiny_model import shell_structure  # noqa: E402
from fuse3d.trellis.attention import use_attn_processors  # noqa: E402
from fuse3d.trellis.dinov2 import DinoV2Encoder  # noqa: E402
from fuse3d.trellis.pipeline import TrellisPipeline, load_pipeline  # noqa: E402

SAMPLERS = {
    "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                                 "params": {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
    "slat_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                     "params": {"steps": 25, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
}


def full_size_pipeline(dev: str) -> TrellisPipeline:
    names = {"ss_flow": "ss_flow_img_dit_L_16l8_fp16", "ss_decoder": "ss_dec_conv3d_16l8_fp16",
             "slat_flow": "slat_flow_img_dit_L_64l8p2_fp16", "slat_decoder_mesh": "slat_dec_mesh_swin8_B_64l8m256c_fp16"}
    dtype = torch.float16 if dev == "cuda" else torch.float32
    nets = {attr: full_size(ckpt, dev, dtype) for attr, ckpt in names.items()}
    with torch.device(dev):
        enc = DinoV2Encoder("vit_large_patch14_reg4_dinov2", 518).eval()
    config = {**SAMPLERS, "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8}}
    pipe = TrellisPipeline(nets, enc, config, "TRELLIS-image-large architecture, random weights", "bench")
    pipe.description, pipe.fingerprint = "random weights", "bench-full-size"
    return pipe.to(dev)


class Timer:
    def __init__(self, dev):
        self.dev = dev

    def __enter__(self):
        if self.dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.dev == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t
        self.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if self.dev == "cuda" else float("nan")


# ----------------------------------------------------------------------------- (d) published-style
class ExplicitMapsProcessor:
    """Explicit attention; in capture runs both softmax maps are accumulated, as the published code does."""

    def __init__(self, tracker, maps, weight=None):
        self.tracker, self.maps, self.weight = tracker, maps, weight

    def __call__(self, attn, q, k, v, *, batch, mask=None):
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scale
        if self.weight is not None and self.tracker.branch == "cond":
            logits = logits * self.weight  # dense [cells, tokens] enhancement matrix
        p = logits.softmax(-1)
        if self.maps is not None and self.tracker.branch == "cond":
            self.maps["tok"] = self.maps.get("tok", 0) + p.float()
            self.maps["cell"] = self.maps.get("cell", 0) + logits.softmax(-2).float()
        return torch.einsum("bhqk,bkhd->bqhd", p, v)


def published_style(trellis, tokens, coords, dev):
    """K+2 sequential samplings with explicit attention in all blocks (captures + final)."""
    n_blocks = len(trellis.slat_flow.blocks)
    tracker = CallTracker()
    g = tokens[-1][None].to(dev)
    for cond in [g] + [t[None].to(dev) for t in tokens[:-1]]:  # the global run, then one per local image
        maps = {}
        procs = {f"blocks.{b}.cross_attn": ExplicitMapsProcessor(tracker, maps) for b in range(n_blocks)}
        with use_attn_processors(trellis.slat_flow, procs):
            trellis.sample_latent(cond, coords, progress=False, call_context=tracker)
        del maps
    unified = torch.cat([t for t in tokens], 0)[None].to(dev)
    n_cells = len(torch.unique(coords[:, 1:] // 2, dim=0))
    weight = torch.ones(n_cells, unified.shape[1], device=dev, dtype=torch.float16)
    weight[: n_cells // 3] *= 2.0
    procs = {f"blocks.{b}.cross_attn": ExplicitMapsProcessor(tracker, None, weight) for b in range(n_blocks)}
    with use_attn_processors(trellis.slat_flow, procs):
        slat = trellis.sample_latent(unified, coords, progress=False, call_context=tracker)
    return slat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="TRELLIS-format folder (default: full-size random weights)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--locals", default="1,2,3")
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    trellis = load_pipeline(args.model, device=dev, progress=False) if args.model else full_size_pipeline(dev)
    spec = load_spec(example_spec("car"))
    coords = shell_structure(args.voxels).to(dev)
    results = {"device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "model": trellis.model_name, "voxels": len(coords),
               "cells": int(len(torch.unique(coords[:, 1:] // 2, dim=0))),
               "samplers": {"structure": trellis.ss_sampler_params, "latent": trellis.slat_sampler_params}}
    rows = []

    def record(name, timer, **extra):
        rows.append({"scenario": name, "seconds": round(timer.seconds, 3), "peak_gib": round(timer.peak_gib, 2), **extra})
        print(f"{name:34s} {timer.seconds:8.2f} s   peak {timer.peak_gib:6.2f} GiB", flush=True)

    # warm-up (kernels, allocator, compile caches)
    fuse = Fuse3D(trellis, Cache(), progress=False)
    warm = fuse.run(spec.global_condition, spec.local_conditions[:1], structure=coords.cpu(), latent_steps=2, lazy=True)
    warm.final
    trellis.decode(warm.final.to(dev), ["mesh"])
    g_tokens = trellis.encode_images([spec.global_condition.prepare().image])

    with Timer(dev) as t_struct:
        trellis.sample_structure(g_tokens, seed=0, progress=False)
    record("structure sampling (part of a, b)", t_struct)
    repeats = []
    for _ in range(3):  # the baseline is short: take the median of three
        with Timer(dev) as t:
            trellis.sample_structure(g_tokens, seed=0, progress=False)
            slat = trellis.sample_latent(g_tokens, coords, seed=0, progress=False)
            mesh_feats = trellis.decode(slat, ["mesh"])["mesh"]
        repeats.append(t)
    t = sorted(repeats, key=lambda r: r.seconds)[1]
    record("(a) TRELLIS generation (median of 3)", t, all_seconds=[round(r.seconds, 3) for r in repeats])
    base = t.seconds
    t0 = time.perf_counter()
    from fuse3d.assets import Mesh

    Mesh.from_decoder_output(trellis.slat_decoder_mesh, mesh_feats.to("cpu"), fill_interior=True)
    results["marching_cubes_cpu_s"] = round(time.perf_counter() - t0, 2)

    for strategy in ("separate", "shared"):
        for k in [int(x) for x in args.locals.split(",")]:
            fuse = Fuse3D(trellis, Cache(), progress=False)
            with Timer(dev) as t:
                trellis.sample_structure(g_tokens, seed=0, progress=False)
                run = fuse.run(spec.global_condition, spec.local_conditions[:k], structure=coords.cpu(), capture_strategy=strategy)
                trellis.decode(run.final.to(dev), ["mesh"])
            stages = {name: round(v, 2) for name, v in run.timings().items() if v >= 0.01}
            record(f"(b) Fuse3D {k} local(s), {strategy}", t, ratio_to_a=round(t.seconds / base, 2), stages=stages)
            print("      stages:", stages, flush=True)
            if k == 3:
                for backend in ("flex", "regions"):
                    with Timer(dev) as tc:
                        retuned = run.retune(strength=2.5, enhancement_backend=backend)
                        trellis.decode(retuned.final.to(dev), ["mesh"])
                    record(f"(c) retune λ, warm cache, {strategy}, {backend}", tc, ratio_to_a=round(tc.seconds / base, 2))
                if strategy == "separate":
                    sep3 = t.seconds
                    sep_run = run
                else:
                    ious = []
                    for j in range(k):
                        a, b = sep_run.aligned_voxels(j), run.aligned_voxels(j)
                        union = int((a | b).sum())
                        ious.append(round(int((a & b).sum()) / union, 3) if union else 1.0)
                    results["shared_vs_separate_iou"] = ious

    if not args.skip_published:
        k = 3
        tokens = [fuse.run(spec.global_condition, spec.local_conditions[:k], structure=coords.cpu(), lazy=True).tokens(i)
                  for i in range(k + 1)]
        with Timer(dev) as t:
            trellis.sample_structure(g_tokens, seed=0, progress=False)
            slat = published_style(trellis, tokens, coords, dev)
            trellis.decode(slat, ["mesh"])
        record("(d) published-style, 3 locals", t, ratio_to_a=round(t.seconds / base, 2),
               ratio_to_b_separate=round(t.seconds / sep3, 2))
    results["rows"] = rows
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

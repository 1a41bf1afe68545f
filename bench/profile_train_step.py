"""Flow-phase training throughput of the small model on a GPU: the previous recipe against this one.

    python bench/profile_train_step.py [--objects 48] [--flow-batch 24] [--ss-batch 96] [--repeats 5] [--profile]

Both run one flow step at equal batch (``--flow-batch`` latent-flow objects, ``--ss-batch``
structure-flow objects) on the same objects, with the optimiser:

- ``previous``: the networks of the bundled ``fuse3d-small`` folder (flows with 16 heads of width 8),
  sparse gather convolutions, and the condition encoder trained jointly (its forward and backward in
  every step), as the trainer did before the encoder was pre-trained and frozen;
- ``current``: :data:`fuse3d.trellis.architectures.SMALL` (4 heads of width 32), dense-grid 64³
  convolutions, and the frozen encoder's tokens computed once (:class:`fuse3d.train.train.FlowData`).

Prints the median step time over ``--repeats`` timings of 5 steps each, with their min and max, the
flow steps per GPU-minute, and with ``--profile`` the operators that take the most device time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fuse3d.bundled import default_model_path
from fuse3d.train import train as T
from fuse3d.train.data import make_objects
from fuse3d.trellis.architectures import SMALL, Architecture, Network
from fuse3d.trellis.checkpoint import read_json


def previous_architecture() -> Architecture:
    """The bundled folder's flows and encoder, with SMALL's autoencoders (they are frozen in this phase)."""
    ckpts = Path(default_model_path()) / "ckpts"
    nets = dict(SMALL.networks)
    for name in ("ss_flow", "slat_flow"):
        cfg = read_json(ckpts / f"{name}_small.json")
        nets[name] = Network(SMALL.networks[name].key, cfg["name"], cfg["args"])
    return Architecture("small", nets, read_json(ckpts / "image_cond_model_small.json")["args"])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, steps: int = 5) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def make_step(arch: Architecture, data, args, frozen_tokens: bool, dense: bool):
    dev = args.device
    rng = np.random.default_rng(0)
    nets = {n: arch.build(n, dev) for n in T.VAE_NETS + T.FLOW_NETS}
    encoder = arch.build_encoder(dev)
    for n in T.VAE_NETS:
        nets[n].eval().requires_grad_(False)
    norm = [torch.zeros(8, device=dev), torch.ones(8, device=dev)]
    flow_data = T.FlowData(nets, encoder.eval(), data, norm, dev)
    images = torch.as_tensor(np.stack([s.images for s in data]), device=dev)  # [O, V, H, W, 3]
    trained = [nets["ss_flow"], nets["slat_flow"]] + ([] if frozen_tokens else [encoder.train()])
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = max(args.flow_batch, args.ss_batch)

    def step():
        idx = rng.integers(len(data), size=batch)
        x0_ss, tokens, x0_slat = flow_data.batch(idx, rng, args.flow_batch)
        with torch.autocast(dev, dtype=torch.bfloat16), T.dense_convolutions(nets["slat_flow"], dense):
            if not frozen_tokens:  # the previous recipe: the encoder runs (and learns) in every step
                view = rng.integers(images.shape[1], size=batch)
                px = images[torch.as_tensor(idx, device=dev), torch.as_tensor(view, device=dev)]
                tokens = encoder(px.permute(0, 3, 1, 2).float() / 255.0)
            cond = T.condition_dropout(tokens)
            t = T.sample_times(batch, dev)
            loss = T.structure_flow_loss(nets["ss_flow"], x0_ss, t, cond)
            loss = loss + T.latent_flow_loss(nets["slat_flow"], x0_slat, t[:args.flow_batch], cond[:args.flow_batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=48)
    ap.add_argument("--flow-batch", type=int, default=24)
    ap.add_argument("--ss-batch", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--profile", action="store_true", help="print the top operators by device time")
    ap.add_argument("--device", default="cuda", help="cuda (what the figures are for) or cpu (a smoke run)")
    ap.add_argument("--render-size", type=int, default=640)
    ap.add_argument("--out", default=None, help="write the timings as JSON")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    data = make_objects(list(range(100000, 100000 + args.objects)), workers=args.workers, views=2,
                        render_size=args.render_size)
    configs = {"previous": (previous_architecture(), False, False), "current": (SMALL, True, True)}
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "flow_batch": args.flow_batch, "ss_batch": args.ss_batch}
    for name, (arch, frozen, dense) in configs.items():
        step = make_step(arch, data, args, frozen, dense)
        timed(step, 3)  # warm-up: kernels, caches, allocator
        times = sorted(timed(step) for _ in range(args.repeats))
        med = float(np.median(times))
        result[name] = {"median_s": round(med, 4), "min_s": round(times[0], 4), "max_s": round(times[-1], 4),
                        "steps_per_gpu_minute": round(60 / med, 1)}
        print(name, result[name], flush=True)
        if args.profile:
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])) as prof:
                timed(step, 3)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
        if args.device == "cuda":
            torch.cuda.empty_cache()
    result["speedup"] = round(result["previous"]["median_s"] / result["current"]["median_s"], 2)
    print("speed-up (previous / current step time):", result["speedup"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

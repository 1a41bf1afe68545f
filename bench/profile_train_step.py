"""Profile one training step of each phase of the small model (``fuse3d.train``) on the GPU.

    python bench/profile_train_step.py [--objects 48] [--flow-batch 24] [--ss-batch 96] [--rows 25]

Prints the wall time per step and the operators that take the most device and host time, to find
what bounds a step (kernels, launches, host synchronisations).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from fuse3d.train import train as T
from fuse3d.train.data import make_objects


def step_time(fn, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=48)
    ap.add_argument("--flow-batch", type=int, default=24)
    ap.add_argument("--ss-batch", type=int, default=96)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="autocast as training does")
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--workers", type=int, default=15)
    args = ap.parse_args()
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    rng = np.random.default_rng(0)
    nets = T.build_networks(dev)
    data = make_objects(list(range(args.objects)), workers=args.workers, views=2)
    for n in T.VAE_NETS:
        nets[n].requires_grad_(False)
    norm = [torch.zeros(8, device=dev), torch.ones(8, device=dev)]
    flow_data = T.FlowData(nets, data, norm, dev)
    for n in T.VAE_NETS:
        nets[n].requires_grad_(True)

    def vae_step():
        idx = rng.integers(len(data), size=args.vae_batch)
        sum(T.vae_losses(nets, [data[i] for i in idx], dev).values()).backward()

    def flow_step():
        idx = rng.integers(len(data), size=max(args.flow_batch, args.ss_batch))
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=args.bf16):
            losses = T.flow_losses(nets, flow_data, idx, rng, n_slat=args.flow_batch)
        sum(losses.values()).backward()

    for name, fn in (("vae", vae_step), ("flow", flow_step)):
        step_time(fn, 3)
        print(f"{name}: {step_time(fn, 5):.3f} s/step (forward + backward, no optimiser)", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        table = prof.key_averages()
        print(table.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()

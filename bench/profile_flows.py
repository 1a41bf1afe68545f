"""Profile one forward of each full-size flow on the GPU (torch.profiler, top kernels by CUDA time).

    python bench/profile_flows.py [--voxels 20000]
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_trellis_forward import full_size  # noqa: E402
from fuse3d.tiny_model import shell_structure  # noqa: E402
from fuse3d.trellis import SparseTensor  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    dev = "cuda"
    cond = torch.randn(1, 1374, 1024, device=dev)
    t = torch.tensor([500.0], device=dev)
    with torch.no_grad():
        ss = full_size("ss_flow_img_dit_L_16l8_fp16", dev, torch.float16)
        x = torch.randn(1, 8, 16, 16, 16, device=dev)
        slat = full_size("slat_flow_img_dit_L_64l8p2_fp16", dev, torch.float16)
        coords = shell_structure(args.voxels).to(dev)
        xs = SparseTensor(torch.randn(len(coords), 8, device=dev), coords)
        for name, fn in (("structure flow", lambda: ss(x, t, cond)), ("latent flow", lambda: slat(xs, t, cond))):
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            print(f"===== {name}")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

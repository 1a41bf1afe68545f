"""Time one forward of the full-size TRELLIS-image-large flows (random weights, fp16 blocks as published).

    python bench/bench_trellis_forward.py --device cuda [--voxels 20000] [--repeats 20]

Structure flow: x [1, 8, 16, 16, 16], 1374 condition tokens × 1024. Latent flow: a fixed spherical
shell of ~20k voxels at 64³ (cells at 32³ for the transformer). Reports the median of ``--repeats``
timed forwards after warm-up, with CUDA events, and the peak GPU memory of each.
"""
import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuse3d.tiny_model import randomize_, shell_structure  # noqa: E402
from fuse3d.trellis import SparseTensor, build  # noqa: E402
from timing import measure  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "trellis_image_large_manifest.json"
# the published TRELLIS-image-large checkpoint of each network (the manifest's keys), by pipeline attribute
FULL_SIZE = {"ss_flow": "ss_flow_img_dit_L_16l8_fp16", "ss_decoder": "ss_dec_conv3d_16l8_fp16",
             "slat_flow": "slat_flow_img_dit_L_64l8p2_fp16", "slat_decoder_gs": "slat_dec_gs_swin8_B_64l8gs32_fp16",
             "slat_decoder_mesh": "slat_dec_mesh_swin8_B_64l8m256c_fp16"}


def full_size(name: str, device: str, dtype: torch.dtype):
    """A full-size network from the manifest's args, random weights, blocks in ``dtype``."""
    entry = json.loads(MANIFEST.read_text())[name]
    with torch.device(device):
        model = build(entry["name"], **{**entry["args"], "use_fp16": False})
    randomize_(model, torch.Generator(device=device).manual_seed(0))
    model.set_torso_dtype(dtype)
    return model.eval()


def timeit(fn, device: str, repeats: int, warmup: int = 3):
    """(median ms, min ms, peak GiB) of ``repeats`` calls after ``warmup``."""
    stats = measure(fn, device, repeats=repeats, warmup=warmup, gpu_time=False)
    return 1e3 * stats.median, 1e3 * min(stats.seconds), stats.peak_gib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--all-networks", action="store_true",
                    help="also run the structure decoder, DINOv2 ViT-L and the three latent decoders once")
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    info = {"device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "dtype": args.dtype}
    cond = torch.randn(1, 1374, 1024, device=dev)
    t = torch.tensor([500.0], device=dev)
    with torch.no_grad():
        ss = full_size("ss_flow_img_dit_L_16l8_fp16", dev, dtype)
        x = torch.randn(1, 8, 16, 16, 16, device=dev)
        ss_ms = timeit(lambda: ss(x, t, cond), dev, args.repeats)
        del ss
        slat = full_size("slat_flow_img_dit_L_64l8p2_fp16", dev, dtype)
        coords = shell_structure(args.voxels).to(dev)
        xs = SparseTensor(torch.randn(len(coords), 8, device=dev), coords)
        cells = len(torch.unique(coords[:, 1:] // 2, dim=0))
        slat_ms = timeit(lambda: slat(xs, t, cond), dev, args.repeats)
        if args.all_networks:
            others = run_other_networks(dev, dtype, coords, args.repeats)
    print(json.dumps(info))
    print(f"structure flow forward   [1,8,16³] 4096 tokens : median {ss_ms[0]:8.2f} ms  min {ss_ms[1]:8.2f} ms  peak {ss_ms[2]:.2f} GiB")
    print(f"latent flow forward {len(coords):6d} voxels / {cells} cells: median {slat_ms[0]:8.2f} ms  min {slat_ms[1]:8.2f} ms  peak {slat_ms[2]:.2f} GiB")

    if args.all_networks:
        for line in others:
            print(line)


def run_other_networks(dev, dtype, coords, repeats):
    from fuse3d.trellis.dinov2 import DinoV2Encoder

    lines = []
    dec = full_size("ss_dec_conv3d_16l8_fp16", dev, dtype)
    z = torch.randn(1, 8, 16, 16, 16, device=dev)
    ms = timeit(lambda: dec(z), dev, repeats)
    lines.append(f"structure decoder [1,8,16³] -> {tuple(dec(z).shape)}: median {ms[0]:8.2f} ms  peak {ms[2]:.2f} GiB")
    del dec
    with torch.device(dev):
        enc = DinoV2Encoder("vit_large_patch14_reg4_dinov2", 518).eval()
    enc = enc.to(dtype)
    pixels = torch.rand(1, 3, 518, 518, device=dev)
    ms = timeit(lambda: enc(pixels), dev, repeats)
    lines.append(f"DINOv2 ViT-L/14 reg4 518² -> {tuple(enc(pixels).shape)}: median {ms[0]:8.2f} ms  peak {ms[2]:.2f} GiB")
    del enc
    slat = SparseTensor(torch.randn(len(coords), 8, device=dev), coords)
    for name in ("slat_dec_gs_swin8_B_64l8gs32_fp16", "slat_dec_rf_swin8_B_64l8r16_fp16", "slat_dec_mesh_swin8_B_64l8m256c_fp16"):
        dec = full_size(name, dev, dtype)
        out = dec.decode_features(slat)
        ms = timeit(lambda: dec.decode_features(slat), dev, max(3, repeats // 4))
        lines.append(f"{name}: {len(coords)} voxels -> {tuple(out.feats.shape)}: median {ms[0]:8.2f} ms  peak {ms[2]:.2f} GiB")
        del dec, out
    return lines


if __name__ == "__main__":
    main()

"""Train the small TRELLIS-architecture model on procedural part-labelled objects.

    python -m fuse3d.train.train --work DIR --minutes 9 [--total-minutes 18] [--objects 1500]

The same network classes as TRELLIS-image-large, at small width. Training runs in time-boxed chunks
that checkpoint to ``DIR/ckpt`` (safetensors + ``state.json``; optimiser moments are not kept, a
resumed chunk warms its learning rate up again) and resume from it, in two phases:

1. **autoencoders** (first ``--vae-share`` of ``--total-minutes``): the sparse-structure VAE on 64³
   surface occupancy (BCE); the structured-latent encoder on per-voxel colour + normal with two
   decoders: Gaussians (colour, scale, opacity) and the mesh decoder (exact signed distances and
   colours at the cube corners of the 4× finer voxels, from the procedural shapes).
2. **flows** (the rest): the structure flow and the latent flow with rectified-flow losses on the
   frozen autoencoders' latents, conditioned on the tokens of a small DINOv2-architecture encoder
   trained jointly from scratch (10 % of conditions dropped to zeros, for classifier-free guidance).

``--export DIR`` writes the TRELLIS-format model folder (fp16 blocks) from the latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from ..assets.gaussians import SH_C0
from ..trellis.checkpoint import read_safetensors, write_json, write_safetensors
from ..trellis.dinov2 import DinoV2Encoder
from ..trellis.pipeline import write_pipeline
from ..trellis.registry import build
from ..trellis.sparse import SparseTensor
from ..trellis.vae import gaussian_representation_config
from .data import ObjectSample, make_objects

WIDTH = 128  # token width of the small encoder = the flows' cond_channels
SIGMA_MIN = 1e-5
MODEL_NAME = "fuse3d-small"

NETWORKS: Dict[str, tuple] = {  # name: (pipeline.json key or None for training-only, class, args)
    "ss_encoder": (None, "SparseStructureEncoder", dict(
        in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[16, 32, 64], use_fp16=True)),
    "ss_decoder": ("sparse_structure_decoder", "SparseStructureDecoder", dict(
        out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[64, 32, 16], use_fp16=True)),
    "slat_encoder": (None, "SLatEncoder", dict(
        resolution=64, in_channels=6, model_channels=64, latent_channels=8, num_blocks=2, num_heads=4, mlp_ratio=2,
        attn_mode="swin", window_size=8, use_fp16=True)),
    "slat_decoder_gs": ("slat_decoder_gs", "SLatGaussianDecoder", dict(
        resolution=64, model_channels=64, latent_channels=8, num_blocks=2, num_heads=4, mlp_ratio=2, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config=gaussian_representation_config(8))),
    "slat_decoder_mesh": ("slat_decoder_mesh", "SLatMeshDecoder", dict(
        resolution=64, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4, mlp_ratio=2, attn_mode="swin",
        window_size=8, use_fp16=True, representation_config={"use_color": True})),
    "ss_flow": ("sparse_structure_flow_model", "SparseStructureFlowModel", dict(
        resolution=16, in_channels=8, out_channels=8, model_channels=128, cond_channels=WIDTH, num_blocks=6, num_heads=16,
        mlp_ratio=4, patch_size=2, pe_mode="ape", qk_rms_norm=True, use_fp16=True)),
    "slat_flow": ("slat_flow_model", "SLatFlowModel", dict(
        resolution=64, in_channels=8, out_channels=8, model_channels=128, cond_channels=WIDTH, num_blocks=6, num_heads=16,
        mlp_ratio=4, patch_size=2, num_io_res_blocks=2, io_block_channels=[32], pe_mode="ape", qk_rms_norm=True,
        use_fp16=True)),
}
ENCODER = dict(arch="vit_small_patch14_reg4_dinov2", img_size=518, embed_dim=WIDTH, depth=4, num_heads=4)
VAE_NETS = ("ss_encoder", "ss_decoder", "slat_encoder", "slat_decoder_gs", "slat_decoder_mesh")
FLOW_NETS = ("ss_flow", "slat_flow", "encoder")
CKPT_GROUPS = {"vae": VAE_NETS, "ss_flow": ("ss_flow", "encoder"), "slat_flow": ("slat_flow",)}


def build_networks(device) -> Dict[str, torch.nn.Module]:
    nets = {}
    for name, (_, cls, args) in NETWORKS.items():
        with torch.device(device):
            nets[name] = build(cls, **{**args, "use_fp16": False}).train()
    with torch.device(device):
        nets["encoder"] = DinoV2Encoder(**ENCODER).train()
    return nets


# ============================================================================ batching
def occupancy(samples: List[ObjectSample], device) -> torch.Tensor:
    occ = torch.zeros(len(samples), 1, 64, 64, 64, device=device)
    for b, s in enumerate(samples):
        c = torch.as_tensor(s.coords, device=device).long()
        occ[b, 0, c[:, 0], c[:, 1], c[:, 2]] = 1
    return occ


def sparse_batch(samples: List[ObjectSample], feats: List[np.ndarray], device) -> SparseTensor:
    coords, rows = [], []
    for b, (s, f) in enumerate(zip(samples, feats)):
        c = torch.as_tensor(s.coords.astype(np.int32))
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        rows.append(torch.as_tensor(f, dtype=torch.float32))
    return SparseTensor(torch.cat(rows).to(device), torch.cat(coords).to(device), len(samples))


def images(samples: List[ObjectSample], rng: np.random.Generator, device) -> torch.Tensor:
    picked = np.stack([s.images[rng.integers(len(s.images))] for s in samples])
    return torch.as_tensor(picked, device=device).permute(0, 3, 1, 2).float() / 255.0


# ============================================================================ losses
def vae_losses(nets, samples: List[ObjectSample], device) -> Dict[str, torch.Tensor]:
    occ = occupancy(samples, device)
    z, mean, logvar = nets["ss_encoder"](occ, sample_posterior=True, return_raw=True)
    logits = nets["ss_decoder"](z)
    ss_bce = F.binary_cross_entropy_with_logits(logits, occ, pos_weight=torch.tensor(20.0, device=device))
    ss_kl = 0.5 * (mean**2 + logvar.exp() - logvar - 1).mean()

    x = sparse_batch(samples, [np.concatenate([s.color, s.normal], 1) for s in samples], device)
    zs, smean, slogvar = nets["slat_encoder"](x, sample_posterior=True, return_raw=True)
    slat_kl = 0.5 * (smean**2 + slogvar.exp() - slogvar - 1).mean()
    gs = nets["slat_decoder_gs"]
    out = gs.decode_features(zs)
    rgb = 0.5 + SH_C0 * gs.field(out, "features_dc")[:, :, 0, :]  # [N, G, 3]
    color = torch.as_tensor(np.concatenate([s.color for s in samples]), device=device)
    gs_color = F.mse_loss(rgb, color[:, None, :].expand_as(rgb))
    cfg = gs.rep_config
    scale = F.softplus(gs.field(out, "scaling") + math.log(math.expm1(cfg["scaling_bias"])))
    gs_scale = (torch.log(scale + 1e-6) - math.log(0.6 / 64)).pow(2).mean()
    opacity = torch.sigmoid(gs.field(out, "opacity") + math.log(cfg["opacity_bias"] / (1 - cfg["opacity_bias"])))
    gs_opacity = (1 - opacity).pow(2).mean()

    # the mesh decoder works at 4× resolution (64 fine voxels per voxel): one object per step
    mesh = nets["slat_decoder_mesh"]
    first = samples[0]
    mout = mesh.decode_features(zs[0])
    rows = torch.as_tensor(first.fine_index, device=device)
    sdf = mesh.field(mout, "sdf")[rows] - 1.0 / (4 * mesh.resolution)
    target = torch.as_tensor(first.corner_sdf, device=device)
    band = 3.0 / (4 * mesh.resolution)
    mesh_sdf = F.smooth_l1_loss(sdf.clamp(-band, band) / band * 3, target.clamp(-band, band) / band * 3)
    mesh_color = F.mse_loss(mesh.field(mout, "color")[rows][..., :3], torch.as_tensor(first.corner_color, device=device))
    return {"ss_bce": ss_bce, "ss_kl": 1e-4 * ss_kl, "slat_kl": 1e-4 * slat_kl, "gs_color": gs_color,
            "gs_scale": 0.01 * gs_scale, "gs_opacity": 0.1 * gs_opacity, "mesh_sdf": mesh_sdf, "mesh_color": mesh_color}


def flow_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """``x_t`` and the velocity ``v = (1 − σ_min)·ε − x0`` the samplers integrate."""
    xt = (1 - t) * x0 + (SIGMA_MIN + (1 - SIGMA_MIN) * t) * noise
    return xt, (1 - SIGMA_MIN) * noise - x0


def flow_losses(nets, samples, rng, norm, device) -> Dict[str, torch.Tensor]:
    b = len(samples)
    with torch.no_grad():
        x0_ss = nets["ss_encoder"](occupancy(samples, device))
        x = sparse_batch(samples, [np.concatenate([s.color, s.normal], 1) for s in samples], device)
        x0_slat = (nets["slat_encoder"](x, sample_posterior=False).feats - norm[0]) / norm[1]
    cond = nets["encoder"](images(samples, rng, device))
    keep = (torch.rand(b, 1, 1, device=device) > 0.1).float()
    cond = cond * keep
    t = torch.sigmoid(torch.randn(b, device=device))  # logit-normal times
    xt, v = flow_target(x0_ss, t.view(b, 1, 1, 1, 1), torch.randn_like(x0_ss))
    ss = F.mse_loss(nets["ss_flow"](xt, 1000 * t, cond), v)
    tv = t[x.batch_index][:, None]
    xt, v = flow_target(x0_slat, tv, torch.randn_like(x0_slat))
    slat = F.mse_loss(nets["slat_flow"](x.replace(xt), 1000 * t, cond).feats, v)
    return {"ss_flow": ss, "slat_flow": slat}


# ============================================================================ checkpoints
def save_checkpoint(nets, state: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for group, names in CKPT_GROUPS.items():
        tensors = {f"{n}.{k}": v.float() for n in names for k, v in nets[n].state_dict().items()}
        write_safetensors(folder / f"{group}.safetensors", tensors)
    write_json(folder / "state.json", state)


def load_checkpoint(nets, folder: Path) -> dict:
    for group, names in CKPT_GROUPS.items():
        tensors = read_safetensors(folder / f"{group}.safetensors")
        for n in names:
            prefix = n + "."
            nets[n].load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return json.loads((folder / "state.json").read_text())


def export_model(nets, state: dict, out: Path) -> Path:
    """Write the trained networks as a TRELLIS-format folder (blocks in fp16, as published)."""
    networks = {key: (nets[n], f"{n}_small", cls, args) for n, (key, cls, args) in NETWORKS.items() if key}
    params = {"steps": 12, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": SIGMA_MIN}}
    nets["encoder"].eval().half()  # the small encoder is stored in fp16 (loaded back as fp32 on CPU)
    return write_pipeline(
        out, networks, (nets["encoder"], "image_cond_model_small"),
        ss_sampler={**sampler, "params": {**params, "cfg_strength": 5.0}},
        slat_sampler={**sampler, "params": {**params, "cfg_strength": 3.0}},
        slat_normalization=state["slat_normalization"],
        fuse3d_meta={"model_name": MODEL_NAME, "description": (
            "small TRELLIS-architecture model trained by fuse3d on procedural part-labelled objects "
            f"({state['objects']} objects, {state['steps']['vae']} autoencoder + {state['steps']['flow']} flow steps)")},
    )


# ============================================================================ loop
def lr_at(step: int, base: float, warmup: int = 200) -> float:
    return base * min(1.0, (step + 1) / warmup)


def train(args) -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work)
    ckpt = work / "ckpt"
    nets = build_networks(dev)
    state = {"objects": args.objects, "seconds": {"vae": 0.0, "flow": 0.0}, "steps": {"vae": 0, "flow": 0},
             "slat_normalization": None, "log": []}
    if (ckpt / "state.json").is_file():
        state = load_checkpoint(nets, ckpt)
        print(f"resumed from {ckpt}: {state['steps']}", flush=True)
    t_data = time.time()
    seeds = list(range(args.seed_base, args.seed_base + args.objects))
    data = make_objects(seeds, workers=args.workers, views=args.views)
    print(f"built {len(data)} objects in {time.time() - t_data:.1f} s", flush=True)
    budget = args.minutes * 60
    vae_budget = args.total_minutes * 60 * args.vae_share
    start = time.time()
    # float32 with TF32 matmuls: the models are small, and half-precision atomics in the sparse
    # gathers' backward passes are slow
    autocast = torch.autocast(dev, enabled=False)

    def chunk_left() -> bool:
        return time.time() - start < budget

    saver = {"last": start}

    def run_phase(phase: str, names, batch_size: int, losses_of, keep_going) -> None:
        """Optimise ``names`` on ``losses_of(batch)`` while ``keep_going()``; log, checkpoint."""
        params = [p for n in names for p in nets[n].parameters()]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        local = 0
        while keep_going():
            t0 = time.time()
            batch = [data[i] for i in rng.integers(len(data), size=batch_size)]
            for g in opt.param_groups:
                g["lr"] = lr_at(local, args.lr)
            with autocast:
                losses = losses_of(batch)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            local += 1
            if local <= 3:
                print(f"{phase} step time {time.time() - t0:.2f} s", flush=True)
            state["steps"][phase] += 1
            state["seconds"][phase] += time.time() - t0
            if state["steps"][phase] % 25 == 0:
                msg = {k: round(float(v), 4) for k, v in losses.items()}
                print(f"{phase} step {state['steps'][phase]}: {msg}", flush=True)
                state["log"].append({"phase": phase, "step": state["steps"][phase], **msg})
            if time.time() - saver["last"] > 120:
                save_checkpoint(nets, state, ckpt)
                saver["last"] = time.time()

    # ---------------------------------------------------------------- phase 1: autoencoders
    run_phase("vae", VAE_NETS, args.vae_batch, lambda batch: vae_losses(nets, batch, dev),
              lambda: state["seconds"]["vae"] < vae_budget and chunk_left())

    # ---------------------------------------------------------------- normalisation of the latents
    if state["seconds"]["vae"] >= vae_budget and state["slat_normalization"] is None:
        with torch.no_grad():
            feats = []
            for i in range(0, min(len(data), 256), 16):
                batch = data[i:i + 16]
                x = sparse_batch(batch, [np.concatenate([s.color, s.normal], 1) for s in batch], dev)
                feats.append(nets["slat_encoder"](x, sample_posterior=False).feats.float())
            f = torch.cat(feats)
            state["slat_normalization"] = {"mean": f.mean(0).tolist(), "std": f.std(0).clamp(min=1e-3).tolist()}
        print("latent normalisation", state["slat_normalization"], flush=True)

    # ---------------------------------------------------------------- phase 2: flows
    if state["slat_normalization"] is not None:
        for n in VAE_NETS:
            nets[n].eval().requires_grad_(False)
        norm = [torch.tensor(state["slat_normalization"][k], device=dev) for k in ("mean", "std")]
        run_phase("flow", FLOW_NETS, args.flow_batch, lambda batch: flow_losses(nets, batch, rng, norm, dev), chunk_left)
    save_checkpoint(nets, state, ckpt)
    print(f"saved {ckpt}: {state['steps']}, seconds {state['seconds']}", flush=True)
    if args.export and state["slat_normalization"] is not None:
        print("exported", export_model(nets, state, Path(args.export)), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="working folder (checkpoints in WORK/ckpt)")
    ap.add_argument("--minutes", type=float, default=9.0, help="training time of this chunk")
    ap.add_argument("--total-minutes", type=float, default=18.0, help="planned training time over all chunks")
    ap.add_argument("--vae-share", type=float, default=0.3, help="share of the total spent on the autoencoders")
    ap.add_argument("--objects", type=int, default=1500)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-base", type=int, default=100000, help="first object seed (evaluation uses others)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--flow-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--export", default=None, help="write the TRELLIS-format model folder here at the end")
    train(ap.parse_args(argv))


if __name__ == "__main__":
    main()
